"""Pictures people would rather look at than read: 2-D scatter plots and image grids."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def scatter_plot(path, panels: dict, title: str = "", lim: float | None = None):
    """One panel per name → [N, ≥2] points (first two coordinates shown)."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.3), squeeze=False)
    for ax, (name, pts) in zip(axes[0], panels.items()):
        pts = pts.detach().cpu().numpy() if torch.is_tensor(pts) else np.asarray(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        if lim is not None:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(path, images: torch.Tensor, nrow: int = 8):
    """Save [N, C, H, W] images in [-1, 1] as one PNG grid."""
    from torchvision.utils import save_image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image((images.detach().float().cpu() / 2 + 0.5).clamp(0, 1), str(path), nrow=nrow, padding=1)
