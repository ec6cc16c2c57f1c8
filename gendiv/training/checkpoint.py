"""Atomic checkpoints: written to a temporary folder, sealed by a manifest of sizes and SHA-256 hashes, then
renamed into place; ``latest`` is replaced atomically last. A run killed at any point leaves either the old or
the new checkpoint complete, and a damaged one is reported by file name instead of loading garbage.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import UserError
from ..fileio import sha256_file

MANIFEST = "manifest.json"
LATEST = "latest"


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, or does not fit the run being resumed."""


def write_manifest(folder: Path):
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def verify_checkpoint(folder: Path):
    """Raise CheckpointError naming the first missing, truncated or altered file."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {folder} has no {MANIFEST}: it was not completely written")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is corrupted ({e})") from e
    for rel, meta in manifest.items():
        p = folder / rel
        if not p.is_file():
            raise CheckpointError(f"checkpoint {folder}: file {rel} is missing")
        if p.stat().st_size != meta["size"]:
            raise CheckpointError(f"checkpoint {folder}: file {rel} is truncated or altered "
                                  f"({p.stat().st_size} bytes, expected {meta['size']})")
        if sha256_file(p) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {folder}: file {rel} is corrupted (SHA-256 mismatch)")


def tmp_dir_for(root: Path, step: int) -> Path:
    return Path(root) / f".tmp-step-{step:08d}"


def seal_checkpoint(root: Path, step: int, keep: int = 2) -> Path:
    """Manifest + rename the temporary folder of ``step`` into ``step-XXXXXXXX``; point ``latest`` at it."""
    root = Path(root)
    tmp = tmp_dir_for(root, step)
    final = root / f"step-{step:08d}"
    write_manifest(tmp)
    if final.exists():  # a damaged checkpoint of the same step (resumed from an older one): keep it, renamed
        set_aside(final, "damaged")
    os.replace(tmp, final)
    point_latest(root, final)
    old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != final and "." not in p.name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def point_latest(root: Path, folder: Path | None):
    """Replace the ``latest`` pointer atomically (None: remove it, no checkpoint is good)."""
    if folder is None:
        (Path(root) / LATEST).unlink(missing_ok=True)
        return
    pointer_tmp = Path(root) / f".{LATEST}.tmp"
    pointer_tmp.write_text(Path(folder).name)
    os.replace(pointer_tmp, Path(root) / LATEST)


def set_aside(folder: Path, reason: str) -> Path:
    """Rename a checkpoint that must not be resumed from to ``<name>.<reason>-<n>``: kept, never deleted, and skipped
    by :func:`latest_intact_checkpoint` (which reads only plain ``step-XXXXXXXX`` names)."""
    n = 1
    while folder.with_name(f"{folder.name}.{reason}-{n}").exists():
        n += 1
    dest = folder.with_name(f"{folder.name}.{reason}-{n}")
    os.replace(folder, dest)
    return dest


def checkpoint_step(folder: Path) -> int | None:
    """The step of a ``step-XXXXXXXX`` checkpoint folder; None for any other name (set aside, temporary)."""
    name = Path(folder).name
    digits = name.removeprefix("step-")
    return int(digits) if name.startswith("step-") and digits.isdigit() else None


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names, verified; None if there is none yet. Stray temporary folders are ignored."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} names {folder.name}, which does not exist")
    verify_checkpoint(folder)
    return folder


def latest_intact_checkpoint(root: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, falling back from a damaged one to older ones.

    Returns (folder or None, problems found on the way), so the caller can say which checkpoint was skipped and why.
    """
    root = Path(root)
    problems: list[str] = []
    # newest first: a run killed between sealing a step and moving ``latest`` still has that step complete
    candidates = sorted((p for p in root.glob("step-*") if p.is_dir() and "." not in p.name), reverse=True)
    for folder in candidates:
        try:
            verify_checkpoint(folder)
            return folder, problems
        except CheckpointError as e:
            problems.append(str(e))
    return None, problems
