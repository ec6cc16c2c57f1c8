"""Small file helpers shared by training, checkpoints and evaluation."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # PIL's modes of 16-bit grayscale PNGs


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


FULL_HASH_BELOW = 64 << 20   # files smaller than this are hashed whole
SAMPLED_BLOCKS, BLOCK = 32, 64 << 10


def content_digest(path) -> str:
    """SHA-256 of a file's content: whole below 64 MiB; above, of its size, its first 1 MiB (a safetensors header and
    its first tensors) and 32 evenly spaced 64 KiB blocks. Retraining changes every weight, so a retrained file
    differs in every sampled block, while reading a multi-GB UNet takes milliseconds instead of seconds."""
    path = Path(path)
    size = path.stat().st_size
    if size < FULL_HASH_BELOW:
        return sha256_file(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        for i in range(SAMPLED_BLOCKS):
            f.seek((size - BLOCK) * i // (SAMPLED_BLOCKS - 1))
            h.update(f.read(BLOCK))
    return h.hexdigest()


def folder_fingerprint(path) -> str:
    """One hash of a model folder's content (every non-hidden file: relative path and :func:`content_digest`).

    Modification times are left out on purpose: a copied or moved folder keeps its fingerprint, a folder retrained
    or replaced in place gets a new one. A single file is fingerprinted the same way.
    """
    path = Path(path)
    if path.is_file():
        return content_digest(path)
    if not path.is_dir():
        raise InputError(f"cannot fingerprint {path}: no such file or folder")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\0{content_digest(f)}\n".encode())
    return h.hexdigest()


def image_files(folder) -> list[Path]:
    """Every image under ``folder`` (recursively, sorted); a clear error for a missing or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"image folder {folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def read_image(path, mode: str | None = None) -> np.ndarray:
    """An image as [H, W] (mode L) or [H, W, 3] (RGB); ``mode=None`` keeps grayscale files grayscale.

    8-bit files come back as uint8 and 16-bit grayscale PNGs as uint16 (their full range, not clipped to 8 bits):
    divide by ``np.iinfo(arr.dtype).max`` for values in [0, 1].
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in SIXTEEN_BIT_MODES:  # PIL's convert("L") would clip every value above 255 to white
                gray = np.asarray(im, dtype=np.int64)
                if gray.min() < 0 or gray.max() > 65535:
                    raise InputError(f"cannot read image {path}: mode {im.mode} values span {gray.min()}..{gray.max()}, "
                                     "outside 16-bit 0..65535")
                gray = gray.astype(np.uint16)
                return np.repeat(gray[:, :, None], 3, axis=-1) if mode == "RGB" else gray
            if mode is None:
                mode = "L" if im.mode in ("L", "1", "LA") else "RGB"
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read image {path}: {e}") from e


def to_unit_interval(arr: np.ndarray) -> np.ndarray:
    """uint8 or uint16 pixels → float32 in [0, 1] (divided by the dtype's maximum: 255 or 65535)."""
    return arr.astype(np.float32) / np.iinfo(arr.dtype).max
