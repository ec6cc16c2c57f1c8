"""Build denoisers and data from configs (shared by the diffusion and distillation trainers)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..models import MLPDenoiser, UNetDenoiser
from .config import ConfigError, check
from .data import build_source


@dataclass
class DataConfig:
    source: str = "toy:ring8_imbalanced"  # toy:<name> | digits | mnist | folder:<path> | npz:<path>
    image_size: int | None = None          # resize images to this square size
    channels: int | None = None            # image folders: 1 or 3 (default: from the files)
    use_labels: bool = True                # class-conditional when the data has labels
    image_range: list = field(default_factory=lambda: [-1.0, 1.0])  # pixel values map to [low, high] (reflected: [0, 1])

    def __post_init__(self):
        check(isinstance(self.image_range, list) and len(self.image_range) == 2
              and all(isinstance(v, (int, float)) for v in self.image_range) and self.image_range[1] > self.image_range[0],
              f"data.image_range must be [low, high] with high > low, got {self.image_range!r}")
        check(self.image_size is None or self.image_size >= 1, f"data.image_size must be ≥ 1, got {self.image_size}")
        check(self.channels in (None, 1, 3), f"data.channels must be 1, 3 or null, got {self.channels}")
        kind = self.source.partition(":")[0]
        check(self.source == "" or kind in ("toy", "digits", "mnist", "folder", "npz"),
              f"data.source: unknown data source {self.source!r}; use toy:<name>, digits, mnist, folder:<path> or npz:<path>")


@dataclass
class ModelConfig:
    kind: str = "auto"                     # auto | mlp | unet | unet_cond (UNet2DConditionModel)
    hidden: int = 128                      # mlp width
    depth: int = 3                         # mlp residual blocks
    block_out_channels: list = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention: bool = False                # attention blocks at the lowest resolution
    dropout: float = 0.0
    parameterization: str = "edm"
    prediction_type: str = "epsilon"
    scalar_names: list = field(default_factory=list)  # extra scalar conditions (unet_cond only)
    time_cond_proj_dim: int = 64

    def __post_init__(self):
        check(self.kind in ("auto", "mlp", "unet", "unet_cond"),
              f"model.kind must be auto, mlp, unet or unet_cond, got {self.kind!r}")
        check(self.hidden >= 1 and self.depth >= 0, f"model.hidden must be ≥ 1 and model.depth ≥ 0, got {self.hidden}, {self.depth}")
        check(len(self.block_out_channels) >= 1 and all(isinstance(c, int) and c >= 1 for c in self.block_out_channels),
              f"model.block_out_channels must be a list of positive integers, got {self.block_out_channels!r}")
        check(self.norm_num_groups >= 1, f"model.norm_num_groups must be ≥ 1, got {self.norm_num_groups}")
        check(all(c % self.norm_num_groups == 0 for c in self.block_out_channels),
              f"model.block_out_channels {self.block_out_channels} must be divisible by model.norm_num_groups={self.norm_num_groups}")
        check(self.layers_per_block >= 1, f"model.layers_per_block must be ≥ 1, got {self.layers_per_block}")
        check(0 <= self.dropout < 1, f"model.dropout must be in [0, 1), got {self.dropout}")


def build_data(cfg: DataConfig):
    source = build_source(cfg.source, cfg.image_size, cfg.channels, cfg.use_labels)
    low, high = cfg.image_range
    if source.is_image and (low, high) != (-1.0, 1.0):  # sources load images in [-1, 1]
        source.images = low + (high - low) * (source.images + 1) / 2
    return source


def build_model(cfg: ModelConfig, source, **denoiser_kwargs) -> torch.nn.Module:
    """An MLP denoiser for point data, a UNet denoiser for images (``denoiser_kwargs``: e.g. data_shift/data_scale)."""
    kind = cfg.kind
    if kind == "auto":
        kind = "unet" if source.is_image else "mlp"
    num_classes = source.num_classes
    if kind == "mlp":
        if source.is_image:
            raise ConfigError("model.kind=mlp needs point data; use unet for images")
        with _model_config_errors():
            return MLPDenoiser(dim=source.shape[0], hidden=cfg.hidden, depth=cfg.depth, num_classes=num_classes,
                               scalar_names=list(cfg.scalar_names), parameterization=cfg.parameterization,
                               prediction_type=cfg.prediction_type, **denoiser_kwargs)
    if kind not in ("unet", "unet_cond"):
        raise ConfigError(f"unknown model.kind {cfg.kind!r}; choose auto, mlp, unet or unet_cond")
    if not source.is_image:
        raise ConfigError(f"model.kind={kind} needs image data")
    c, h, w = source.shape
    n_levels = len(cfg.block_out_channels)
    if h % (2 ** (n_levels - 1)) or w % (2 ** (n_levels - 1)):
        raise ConfigError(f"image size {h}×{w} is not divisible by 2^{n_levels - 1} for {n_levels} UNet levels "
                          "(model.block_out_channels); change data.image_size or the number of levels")
    down = ["DownBlock2D"] * n_levels
    up = ["UpBlock2D"] * n_levels
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    common = dict(sample_size=h, in_channels=c, out_channels=c, block_out_channels=list(cfg.block_out_channels),
                  layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
                  num_class_embeds=None if num_classes is None else num_classes + 1)
    if kind == "unet":
        if cfg.scalar_names:
            raise ConfigError("scalar conditions need model.kind=unet_cond")
        unet_class = "UNet2DModel"
        unet_config = dict(common, down_block_types=down, up_block_types=up, dropout=cfg.dropout)
    else:
        unet_class = "UNet2DConditionModel"
        unet_config = dict(common, down_block_types=[d.replace("Attn", "") for d in down],
                           up_block_types=[u.replace("Attn", "") for u in up], mid_block_type="UNetMidBlock2D",
                           time_cond_proj_dim=cfg.time_cond_proj_dim if cfg.scalar_names else None, dropout=cfg.dropout)
    with _model_config_errors():
        return UNetDenoiser(unet_class=unet_class, unet_config=unet_config, parameterization=cfg.parameterization,
                            prediction_type=cfg.prediction_type, num_classes=num_classes,
                            scalar_names=list(cfg.scalar_names), **denoiser_kwargs)


@contextlib.contextmanager
def _model_config_errors():
    """A denoiser's constructor refuses bad arguments with ValueError (diffusers' habit); here they came from the
    model section of the config, so they are config errors."""
    try:
        yield
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"model: {e}") from None
