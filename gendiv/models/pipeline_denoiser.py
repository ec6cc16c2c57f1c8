"""The denoising network of a diffusers pipeline family as a gendiv denoiser x̂₀ = D(x, σ, cond), called exactly as
that family's pipeline calls it:

- ``dit`` (``DiTPipeline``): ``DiTTransformer2DModel(x, t, class_labels)``, null class ``num_classes``;
- ``sdxl`` (``StableDiffusionXLPipeline``): ``UNet2DConditionModel(x, t, prompt tokens, added_cond_kwargs={pooled
  text, add_time_ids})``;
- ``sd3`` (``StableDiffusion3Pipeline``): ``SD3Transformer2DModel(x, prompt tokens, pooled projections, t)`` (MMDiT);
- ``pixart`` (``PixArtAlphaPipeline``/``PixArtSigmaPipeline``): ``PixArtTransformer2DModel(x, prompt tokens,
  encoder_attention_mask, t)``.

A learned-sigma output (``out_channels = 2 · in_channels``: DiT, PixArt) is split off and dropped, as those
pipelines drop it. The σ → timestep map and the x̂₀ formula are the shared ones of ``DenoiserMixin`` (parameterisation
read from the folder's scheduler, ``from_diffusers.py``).

Text conditions travel as one tensor ``Condition.text_embeds`` [B, L + k, D]: the L prompt tokens followed by k rows
holding the family's per-prompt vectors (pooled embedding, attention mask) flattened and zero-padded to width D
(:func:`pack_text`), so the null prompt, CFG's ``drop`` and the trainer's prompt tables work for every family as
they do for Stable Diffusion 1.5.
"""
from __future__ import annotations

import math

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

from ..space import SIGMA_DATA
from .denoiser import DENOISER_CLASSES, DenoiserMixin

FAMILIES = {  # family → the diffusers class of its denoising network
    "dit": "DiTTransformer2DModel",
    "sdxl": "UNet2DConditionModel",
    "sd3": "SD3Transformer2DModel",
    "pixart": "PixArtTransformer2DModel",
}


def pack_text(tokens: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, L, D] tokens and per-prompt vectors {name: [B, n]} → [B, L + k, D] (vectors flattened in order, zero-padded
    to whole rows of width D)."""
    if not extras:
        return tokens
    width = tokens.shape[-1]
    flat = torch.cat([v.reshape(v.shape[0], -1).to(tokens.dtype) for v in extras.values()], 1)
    rows = math.ceil(flat.shape[1] / width)
    flat = torch.nn.functional.pad(flat, (0, rows * width - flat.shape[1]))
    return torch.cat([tokens, flat.reshape(tokens.shape[0], rows, width)], 1)


def unpack_text(packed: torch.Tensor, parts: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The inverse of :func:`pack_text` for ``parts`` = [[name, size], ...]."""
    if not parts:
        return packed, {}
    width, total = packed.shape[-1], sum(n for _, n in parts)
    rows = math.ceil(total / width)
    flat = packed[:, -rows:].reshape(packed.shape[0], -1)
    extras, start = {}, 0
    for name, n in parts:
        extras[name] = flat[:, start:start + n]
        start += n
    return packed[:, :-rows], extras


def _net_class(name: str):
    import diffusers

    return getattr(diffusers, name)


class PipelineDenoiser(DenoiserMixin, ModelMixin, ConfigMixin):
    """A pipeline family's network (transformer or SDXL UNet) as an EDM denoiser D(x, σ, cond).

    Args:
        family: one of ``FAMILIES`` (how the network is called).
        net_config: the network's config; the network (class ``FAMILIES[family]``) is rebuilt from it on load.
        parameterization, prediction_type, sigma_data, c_noise_scale, vp_schedule, x0_clip: as for ``UNetDenoiser``.
        num_classes: real classes of a class-conditional family (DiT: ``num_embeds_ada_norm``, null index
            ``num_classes``).
        text_embeds_shape: [L + k, D] of the packed prompt condition; ``null_text_embeds`` holds the pipeline's own
            negative (empty-prompt) condition.
        text_parts: [[name, size], ...] of the per-prompt vectors packed after the tokens (``pooled``, ``mask``).
        added_ids: the constant micro-conditioning the pipeline adds per sample (SDXL's ``add_time_ids`` = original
            size, crop corner, target size; PixArt's resolution [h, w] when its network uses it).
    """

    @register_to_config
    def __init__(self, family: str = "dit", net_config: dict | None = None, parameterization: str = "vp",
                 prediction_type: str = "epsilon", sigma_data: float = SIGMA_DATA, c_noise_scale: float = 1.0,
                 vp_schedule: dict | None = None, x0_clip: dict | None = None, num_classes: int | None = None,
                 text_embeds_shape: list | None = None, text_parts: list | None = None, added_ids: list | None = None,
                 scalar_names: list | None = None):
        super().__init__()
        self._check_parameterization(parameterization, prediction_type)
        if family not in FAMILIES:
            raise ValueError(f"unknown pipeline family {family!r}; choose one of {sorted(FAMILIES)}")
        if scalar_names:
            raise ValueError("PipelineDenoiser takes no scalar conditions")
        cfg = {k: v for k, v in dict(net_config or {}).items() if not k.startswith("_")}
        self.net = _net_class(FAMILIES[family]).from_config(cfg)
        if text_embeds_shape is not None:
            self.register_buffer("null_text_embeds", torch.zeros(*text_embeds_shape))
        self.alphas_cumprod = None
        if parameterization == "vp":
            from .denoiser import _vp_alphas_cumprod

            self.alphas_cumprod = _vp_alphas_cumprod(vp_schedule).double()
        self._features = None
        self._feature_tap().register_forward_hook(self._store_features)

    @classmethod
    def from_net(cls, net, family: str, **kwargs) -> "PipelineDenoiser":
        """Wrap an existing network (weights copied)."""
        config = {k: v for k, v in dict(net.config).items() if not k.startswith("_")}
        den = cls(family=family, net_config=config, **kwargs)
        den.net.load_state_dict(net.state_dict())
        return den

    # -- shapes and features -----------------------------------------------------------------------
    def sample_shape(self, batch: int) -> tuple:
        size = self.net.config.sample_size
        size = size if isinstance(size, (list, tuple)) else (size, size)
        return (batch, self.net.config.in_channels, *size)

    def _check_input_shape(self, x):
        want = self.sample_shape(x.shape[0]) if x.ndim == 4 else None
        if want is None or tuple(x.shape) != want:
            raise ValueError(f"{type(self).__name__} ({self.config.family}) expects latents {list(want or ())} "
                             f"[B, C, H, W], got {tuple(x.shape)}")

    def _feature_tap(self):
        if self.config.family == "sdxl":
            return self.net.mid_block if self.net.mid_block is not None else self.net.down_blocks[-1]
        blocks = self.net.transformer_blocks
        return blocks[len(blocks) // 2]

    def _store_features(self, module, inputs, output):
        out = output[-1] if isinstance(output, tuple) else output  # MMDiT blocks return (text, image) states
        self._features = out.transpose(1, 2) if out.ndim == 3 else out  # tokens [B, N, D] → [B, D, N]

    # -- the family's call -------------------------------------------------------------------------
    def _network(self, net_input, net_time, cond, want_features):
        if want_features == "all":
            raise ValueError(f"{type(self).__name__} exposes one feature layer; features of every level need a "
                             "UNetDenoiser")
        batch, dtype = net_input.shape[0], self.dtype
        t = net_time.to(dtype).expand(batch)
        family = self.config.family
        self._features = None
        if family == "dit":
            labels = self.class_index(cond, batch, net_input.device)
            out = self.net(net_input, timestep=t, class_labels=labels, return_dict=False)[0]
        else:
            tokens, extras = unpack_text(self.text_states(cond, batch, net_input.device).to(dtype),
                                         self.config.text_parts or [])
            out = getattr(self, f"_call_{family}")(net_input, t, tokens, extras)
        feats, self._features = self._features, None
        if out.shape[1] == 2 * net_input.shape[1]:  # learned sigma: the pipelines keep the first half only
            out = out[:, : net_input.shape[1]]
        return out, (feats if want_features else None)

    def _added_ids(self, batch: int, device) -> torch.Tensor:
        return torch.tensor(self.config.added_ids, dtype=self.dtype, device=device).expand(batch, -1)

    def _call_sdxl(self, x, t, tokens, extras):
        added = {"text_embeds": extras["pooled"], "time_ids": self._added_ids(x.shape[0], x.device)}
        return self.net(x, t, encoder_hidden_states=tokens, added_cond_kwargs=added, return_dict=False)[0]

    def _call_sd3(self, x, t, tokens, extras):
        return self.net(hidden_states=x, encoder_hidden_states=tokens, pooled_projections=extras["pooled"],
                        timestep=t, return_dict=False)[0]

    def _call_pixart(self, x, t, tokens, extras):
        added = {"resolution": None, "aspect_ratio": None}
        if self.net.use_additional_conditions:
            res = self._added_ids(x.shape[0], x.device)
            added = {"resolution": res, "aspect_ratio": res[:, :1] / res[:, 1:]}
        return self.net(x, encoder_hidden_states=tokens, encoder_attention_mask=extras["mask"], timestep=t,
                        added_cond_kwargs=added, return_dict=False)[0]


DENOISER_CLASSES["PipelineDenoiser"] = PipelineDenoiser  # OneStepGenerator rebuilds its backbone by class name
