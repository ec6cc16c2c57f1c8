"""Pictures people would rather look at than read: 2-D scatter plots and image grids, labelled."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _points(pts) -> np.ndarray:
    return pts.detach().cpu().float().numpy() if torch.is_tensor(pts) else np.asarray(pts, dtype=np.float64)


def view_limits(reference, margin: float = 0.15) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits that hold the reference points (their 0.5–99.5% range in each coordinate) plus a margin."""
    ref = _points(reference)[:, :2]
    ref = ref[np.isfinite(ref).all(1)]
    if len(ref) == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    lo, hi = np.percentile(ref, 0.5, axis=0), np.percentile(ref, 99.5, axis=0)
    pad = margin * np.maximum(hi - lo, 1e-6)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def scatter_plot(path, panels: dict, title: str = "", reference=None, lim: float | None = None):
    """One panel per name → [N, ≥2] points (first two coordinates), every panel on the same axes.

    The view comes from ``reference`` (the truth, so samples are judged on its scale), else from all panels, or
    ±``lim``; each panel says how many of its points fall outside the view.
    """
    if lim is not None:
        xlim = ylim = (-lim, lim)
    else:
        xlim, ylim = view_limits(reference if reference is not None
                                 else np.concatenate([_points(p)[:, :2] for p in panels.values()]))
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.6), squeeze=False)
    for ax, (name, pts) in zip(axes[0], panels.items()):
        pts = _points(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        outside = int((~((pts[:, 0] >= xlim[0]) & (pts[:, 0] <= xlim[1]) & (pts[:, 1] >= ylim[0])
                         & (pts[:, 1] <= ylim[1]))).sum())
        ax.set_title(f"{name}\n{len(pts)} points" + (f", {outside} outside the view" if outside else ""), fontsize=8)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
        ax.set_xlabel("x₁", fontsize=8)
        ax.set_ylabel("x₂", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(path, images: torch.Tensor, nrow: int = 8, title: str = ""):
    """Save [N, C, H, W] images in [-1, 1] as one PNG grid, with a title above it."""
    from torchvision.utils import make_grid

    grid = make_grid((images.detach().float().cpu() / 2 + 0.5).clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    h, w = grid.shape[1:]
    scale = max(1.0, 320 / max(w, 1))
    fig = plt.figure(figsize=(w * scale / 100, h * scale / 100 + 0.35), dpi=100)
    ax = fig.add_axes((0, 0, 1, h * scale / 100 / (h * scale / 100 + 0.35)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    fig.suptitle(title or f"{len(images)} samples", fontsize=9, y=0.99)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
