"""Small file helpers shared by training, checkpoints and evaluation."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_files(folder) -> list[Path]:
    """Every image under ``folder`` (recursively, sorted); a clear error for a missing or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def read_image(path, mode: str | None = None) -> np.ndarray:
    """An image as uint8 [H, W] (mode L) or [H, W, 3] (RGB); ``mode=None`` keeps grayscale files grayscale."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if mode is None:
                mode = "L" if im.mode in ("L", "1", "I;16") else "RGB"
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
