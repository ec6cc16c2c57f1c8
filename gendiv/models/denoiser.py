"""Denoisers x̂₀ = D(x, σ, cond) over diffusers UNets and small MLPs, in EDM's σ parameterisation.

Every network in gendiv (teacher, fake score, generator backbone) is one of these, and so is anything that
stands in for one (analytic mixtures, guided combinations): samplers, losses and metrics only see ``D``.
"""
from __future__ import annotations

import math

import torch
from diffusers import ModelMixin, UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from ..condition import Condition, as_condition
from ..space import (SIGMA_DATA, append_dims, as_sigma_batch, edm_preconditioning, flow_time_from_sigma,
                     vp_alpha_sigma, vp_timestep_from_sigma, x0_from_prediction)

PARAMETERIZATIONS = {
    # parameterisation → prediction types it accepts
    "edm": ("epsilon", "v_prediction", "sample"),  # diffusers EDM semantics: D = c_skip x ± c_out F, or D = F
    "vp": ("epsilon", "v_prediction", "sample"),   # x_t = α_t x₀ + σ_t ε at a (continuous) DDPM timestep
    "flow": ("flow",),                             # x_t = (1−t)x₀ + tε, network predicts v = ε − x₀
}
UNET_CLASSES = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}


def scalar_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    """diffusers' ``get_guidance_scale_embedding`` (LCM / StableDiffusionPipeline's ``timestep_cond``, after VDM):
    sin and cos of 1000·v at frequencies 10000^(−i/(half − 1)), zero-padded to an odd ``dim``.

    Matching it exactly is what lets a guidance-free UNet saved by gendiv run in diffusers' pipelines, which feed
    ``timestep_cond = get_guidance_scale_embedding(guidance_scale − 1)`` (tests/test_guidance.py compares them).
    """
    values = values.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=values.device)
                      * -(torch.log(torch.tensor(10000.0)) / (half - 1)).to(values.device))
    args = values[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return nn.functional.pad(emb, (0, 1)) if dim % 2 == 1 else emb


class DenoiserMixin:
    """Shared σ → (network input, network time) → x̂₀ logic for every trainable denoiser.

    Subclasses provide ``self.config`` with ``parameterization``, ``prediction_type``, ``sigma_data``,
    ``num_classes``, ``scalar_names`` and implement ``_network(net_input, net_time, cond, want_features)``.
    """

    def _check_parameterization(self, parameterization: str, prediction_type: str):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {sorted(PARAMETERIZATIONS)}")
        if prediction_type not in PARAMETERIZATIONS[parameterization]:
            raise ValueError(f"unknown prediction_type {prediction_type!r} for parameterization {parameterization!r}; "
                             f"choose one of {PARAMETERIZATIONS[parameterization]}")

    def _check_condition(self, cond: Condition | None, batch: int):
        num_classes, names = self.config.num_classes, list(self.config.scalar_names or [])
        labels = None if cond is None else cond.class_labels
        if labels is not None:
            if num_classes is None:
                raise ValueError(f"{type(self).__name__} is unconditional (num_classes=None) but got class labels")
            if labels.shape != (batch,):
                raise ValueError(f"class_labels must have shape [{batch}], got {tuple(labels.shape)}")
            if labels.dtype.is_floating_point:
                raise ValueError("class_labels must be integers")
            if ((labels < 0) | (labels >= num_classes)).any():
                raise ValueError(f"class label out of range [0, {num_classes}): got values "
                                 f"{labels.min().item()}..{labels.max().item()}")
        text = None if cond is None else cond.text_embeds
        shape = getattr(self.config, "text_embeds_shape", None)
        if text is not None:
            if shape is None:
                raise ValueError(f"{type(self).__name__} is not text-conditioned (text_embeds_shape=None) but got "
                                 "prompt embeddings")
            if tuple(text.shape) != (batch, *shape):
                raise ValueError(f"text_embeds must have shape [{batch}, {shape[0]}, {shape[1]}] (the text encoder's "
                                 f"[B, tokens, width]), got {tuple(text.shape)}")
        given = set() if cond is None else set(cond.scalars)
        if given != set(names):
            raise ValueError(f"{type(self).__name__} expects scalar conditions {names}, got {sorted(given)}")
        for k, v in ({} if cond is None else cond.scalars).items():
            if v.shape != (batch,):
                raise ValueError(f"scalar condition {k!r} must have shape [{batch}], got {tuple(v.shape)}")

    def class_index(self, cond: Condition | None, batch: int, device) -> torch.Tensor | None:
        """Embedding index per sample: the label, or the reserved null index ``num_classes`` when dropped/absent."""
        if self.config.num_classes is None:
            return None
        null = torch.full((batch,), self.config.num_classes, dtype=torch.long, device=device)
        if cond is None or cond.class_labels is None:
            return null
        idx = cond.class_labels.to(device).long()
        if cond.drop is not None:
            idx = torch.where(cond.drop.to(device), null, idx)
        return idx

    def text_states(self, cond: Condition | None, batch: int, device) -> torch.Tensor:
        """Per-sample prompt embeddings [B, L, D]: the given ones, or the stored null prompt where dropped/absent."""
        null = self.null_text_embeds.to(device)[None].expand(batch, -1, -1)
        if cond is None or cond.text_embeds is None:
            return null
        text = cond.text_embeds.to(device, null.dtype)
        if cond.drop is None:
            return text
        return torch.where(cond.drop.to(device)[:, None, None], null, text)

    def forward(self, x: torch.Tensor, sigma, cond=None, return_features: bool = False):
        """x̂₀ = D(x, σ, cond). ``sigma``: float or [B]. With ``return_features`` also the bottleneck activations
        (True or "bottleneck"), or with "all" a list of every encoder level's and the bottleneck's (UNets)."""
        if x.ndim < 2:
            raise ValueError(f"x must be batched (at least 2-D), got shape {tuple(x.shape)}")
        self._check_input_shape(x)
        cond = as_condition(cond)
        batch = x.shape[0]
        sigma = as_sigma_batch(sigma, batch, device=x.device)
        self._check_condition(cond, batch)
        shift, scale = getattr(self.config, "data_shift", 0.0), getattr(self.config, "data_scale", 1.0)
        if (shift, scale) != (0.0, 1.0):
            # an exact change of variables: the network works on (x − shift)/scale at σ/scale (e.g. a [0, 1] box seen
            # as [−1, 1]), and D is mapped back, so callers see the data's own coordinates
            out = self._denoise((x - shift) / scale, sigma / scale, cond, return_features)
            denoised, feats = out if return_features else (out, None)
            denoised = shift + scale * denoised
            return (denoised, feats) if return_features else denoised
        return self._denoise(x, sigma, cond, return_features)

    def _denoise(self, x, sigma, cond, return_features):
        p, pred_type = self.config.parameterization, self.config.prediction_type
        s = append_dims(sigma, x.ndim)
        if p == "edm":
            c_skip, c_out, c_in, c_noise = edm_preconditioning(s, self.config.sigma_data)
            raw, feats = self._network((c_in * x).to(self.dtype), c_noise.flatten() * self.config.c_noise_scale, cond, return_features)
            raw = raw.float()
            if pred_type == "sample":
                denoised = raw
            else:
                sign = 1.0 if pred_type == "epsilon" else -1.0
                denoised = c_skip * x + sign * c_out * raw
        elif p == "vp":
            alpha_t, sigma_t = vp_alpha_sigma(s)
            x_t = alpha_t * x
            t = vp_timestep_from_sigma(sigma, self.alphas_cumprod.to(x.device))
            raw, feats = self._network(x_t.to(self.dtype), t, cond, return_features)
            denoised = x0_from_prediction(raw.float(), x_t, alpha_t, sigma_t, pred_type)
        else:  # flow
            t = flow_time_from_sigma(s)
            x_t = x / (1 + s)  # = (1 − t)·x, without 1 − t's cancellation as t → 1 (a one-step student's σ_init)
            raw, feats = self._network(x_t.to(self.dtype), t.flatten() * 1000, cond, return_features)
            denoised = x0_from_prediction(raw.float(), x_t, 1 - t, t, "flow")
        denoised = clip_x0(denoised, getattr(self.config, "x0_clip", None))
        return (denoised, feats) if return_features else denoised


def clip_x0(x0: torch.Tensor, setting: dict | None) -> torch.Tensor:
    """x̂₀ clipped as the folder's diffusers scheduler clips its ``pred_original_sample``: dynamic thresholding
    (Imagen, Saharia et al. 2022 §2.3: s = clamp(quantile_p |x̂₀|, 1, max), x̂₀ ← clamp(x̂₀, −s, s)/s, per sample), else
    ``clip_sample`` to [−r, r]. The value is clipped; the gradient passes straight through, so trained copies of a
    clipping teacher (student, fake score) keep learning at saturated pixels."""
    if not setting:
        return x0
    if setting.get("thresholding"):
        flat = x0.reshape(x0.shape[0], -1).abs()
        s = torch.quantile(flat, setting["dynamic_thresholding_ratio"], dim=1)
        s = append_dims(s.clamp(min=1, max=setting["sample_max_value"]), x0.ndim)
        clipped = torch.maximum(torch.minimum(x0, s), -s) / s
    else:
        r = setting["clip_sample_range"]
        clipped = x0.clamp(-r, r)
    return x0 + (clipped - x0).detach()


def _vp_alphas_cumprod(vp_schedule: dict | None) -> torch.Tensor:
    from diffusers import DDPMScheduler

    if vp_schedule is None:
        raise ValueError("parameterization 'vp' needs vp_schedule (DDPMScheduler config: beta_schedule, beta_start, ...)")
    return DDPMScheduler(**vp_schedule).alphas_cumprod.clone()


class UNetDenoiser(DenoiserMixin, ModelMixin, ConfigMixin):
    """A diffusers UNet as an EDM denoiser D(x, σ, cond).

    Args:
        unet_class: ``"UNet2DModel"`` or ``"UNet2DConditionModel"``.
        unet_config: the UNet's config (what ``unet.config`` holds); the UNet is rebuilt from it on load.
        parameterization: ``"edm"`` (trained in EDM's σ space; ``prediction_type`` as in diffusers'
            ``EDMEulerScheduler``: epsilon → D = c_skip x + c_out F, v_prediction → minus sign, sample → D = F),
            ``"vp"`` (a DDPM-trained UNet; ``vp_schedule`` is the DDPMScheduler config it was trained with), or
            ``"flow"`` (rectified flow, ``prediction_type="flow"``).
        num_classes: number of real classes; the UNet must have ``num_class_embeds = num_classes + 1`` and index
            ``num_classes`` is the null class used for guidance.
        scalar_names: names of extra scalar conditions (e.g. ``["beta"]``); they enter through ``timestep_cond``
            (UNet2DConditionModel with ``time_cond_proj_dim``) as a sinusoidal embedding.
        c_noise_scale: the UNet's timestep is ``c_noise_scale · ln(σ)/4`` in the EDM parameterisation (1.0 matches
            diffusers' EDM schedulers; the default spreads σ over the positional embedding's range).
        data_shift, data_scale: the network sees (x − shift)/scale at σ/scale and D is mapped back (reflected models
            on a [0, 1] box use shift ½, scale ½, so the network works on [−1, 1] as EDM's preconditioning expects).
        text_embeds_shape: ``[tokens, width]`` of the prompt embeddings a text-conditioned UNet2DConditionModel reads as
            ``encoder_hidden_states`` (Stable Diffusion 1.5: ``[77, 768]``); the null prompt's embedding (of ``""``) is
            the buffer ``null_text_embeds``, used where ``Condition.drop`` is set: CFG's negative pass.
        x0_clip: the folder scheduler's x̂₀ clipping (``clip_sample_range`` or ``thresholding`` settings, see
            :func:`clip_x0`); None: no clipping.
    """

    @register_to_config
    def __init__(self, unet_class: str = "UNet2DModel", unet_config: dict | None = None, parameterization: str = "edm",
                 prediction_type: str = "epsilon", sigma_data: float = SIGMA_DATA, num_classes: int | None = None,
                 scalar_names: list | None = None, c_noise_scale: float = 250.0, vp_schedule: dict | None = None,
                 data_shift: float = 0.0, data_scale: float = 1.0, text_embeds_shape: list | None = None,
                 x0_clip: dict | None = None):
        super().__init__()
        self._check_parameterization(parameterization, prediction_type)
        if unet_class not in UNET_CLASSES:
            raise ValueError(f"unknown unet_class {unet_class!r}; choose one of {sorted(UNET_CLASSES)}")
        cfg = {k: v for k, v in dict(unet_config or {}).items() if not k.startswith("_")}
        self.unet = UNET_CLASSES[unet_class].from_config(cfg)
        ucfg = self.unet.config
        if num_classes is not None and ucfg.num_class_embeds != num_classes + 1:
            raise ValueError(f"num_classes={num_classes} needs the UNet built with num_class_embeds={num_classes + 1} "
                             f"(one extra null class), got {ucfg.num_class_embeds}")
        if text_embeds_shape is not None:
            if unet_class != "UNet2DConditionModel" or len(text_embeds_shape) != 2 \
                    or ucfg.cross_attention_dim != text_embeds_shape[1]:
                raise ValueError(f"text_embeds_shape={text_embeds_shape} needs a UNet2DConditionModel whose "
                                 f"cross_attention_dim is the embedding width; got {unet_class} with "
                                 f"cross_attention_dim={ucfg.get('cross_attention_dim')}")
            self.register_buffer("null_text_embeds", torch.zeros(*text_embeds_shape))
        names = list(scalar_names or [])
        if names:
            if unet_class != "UNet2DConditionModel" or not ucfg.time_cond_proj_dim:
                raise ValueError("scalar conditions need a UNet2DConditionModel with time_cond_proj_dim set")
            if ucfg.time_cond_proj_dim % len(names):
                raise ValueError("time_cond_proj_dim must be divisible by the number of scalar conditions")
        # ᾱ stays float64 whatever the model's dtype: a buffer would be cast with .to(bf16), where ᾱ rounds to 1
        # at low σ and the timestep becomes NaN
        self.alphas_cumprod = _vp_alphas_cumprod(vp_schedule).double() if parameterization == "vp" else None  # no buffer
        self._tapped = None  # {tap name: activation} during a forward that asked for features
        for block in self.feature_taps().values():
            block.register_forward_hook(self._store_features)  # a bound method: deepcopy rebinds it to the copy

    @classmethod
    def from_unet(cls, unet, scheduler=None, **kwargs) -> "UNetDenoiser":
        """Wrap an existing UNet (its weights are copied).

        Give the ``scheduler`` it was trained with (a stock diffusers scheduler) and the parameterisation and
        prediction type are read from its config: a v-prediction DDPM UNet becomes ``parameterization="vp",
        prediction_type="v_prediction"``, an EDM one ``"edm"``, a flow-matching one ``"flow"``. Without a scheduler
        the keyword arguments say it (defaults: EDM, epsilon), so a UNet from another convention must be told.
        """
        if scheduler is not None:
            from .from_diffusers import denoiser_kwargs_from_scheduler

            kwargs = {**denoiser_kwargs_from_scheduler(scheduler), **kwargs}
        config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}  # drops _name_or_path etc.
        den = cls(unet_class=type(unet).__name__, unet_config=config, **kwargs)
        den.unet.load_state_dict(unet.state_dict())
        return den

    def feature_taps(self) -> dict[str, nn.Module]:
        """Blocks whose outputs a discriminator may read: each encoder level ``down_<i>`` (a down block's output, after
        its downsampler) and the bottleneck ``mid`` (absent in UNets without a mid block)."""
        taps = {f"down_{i}": block for i, block in enumerate(self.unet.down_blocks)}
        if getattr(self.unet, "mid_block", None) is not None:
            taps["mid"] = self.unet.mid_block
        return taps

    def bottleneck_tap(self) -> str:
        return "mid" if "mid" in self.feature_taps() else f"down_{len(self.unet.down_blocks) - 1}"

    def _store_features(self, module, inputs, output):
        if self._tapped is not None:
            name = next(n for n, block in self.feature_taps().items() if block is module)
            self._tapped[name] = output[0] if isinstance(output, tuple) else output

    def _check_input_shape(self, x):
        """Any spatial size the UNet's down- and up-sampling maps back onto itself: it is convolutional, so it runs at
        sizes other than its trained ``sample_size`` (diffusers' height/width), as long as each level halves evenly."""
        c = self.unet.config.in_channels
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"{type(self).__name__} expects images [B, {c}, H, W], got {tuple(x.shape)}")
        factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(f"{type(self).__name__} expects spatial size in multiples of {factor} (its UNet halves the "
                             f"size {factor.bit_length() - 1} times), got {tuple(x.shape[2:])}")

    def _network(self, net_input, net_time, cond, want_features):
        batch = net_input.shape[0]
        labels = self.class_index(cond, batch, net_input.device)
        kwargs = {}
        if labels is not None:
            kwargs["class_labels"] = labels
        names = list(self.config.scalar_names or [])
        if names:
            dim = self.unet.config.time_cond_proj_dim // len(names)
            kwargs["timestep_cond"] = torch.cat([scalar_embedding(cond.scalars[n], dim) for n in names], 1).to(self.dtype)
        if self.config.text_embeds_shape is not None:
            kwargs["encoder_hidden_states"] = self.text_states(cond, batch, net_input.device).to(self.dtype)
        elif isinstance(self.unet, UNet2DConditionModel):
            kwargs["encoder_hidden_states"] = None
        if self.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
            net_input = net_input.contiguous(memory_format=torch.channels_last)  # match a channels-last UNet
        layers = feature_layers(want_features)
        self._tapped = {} if layers else None
        try:
            out = self.unet(net_input, net_time.to(net_input.dtype), return_dict=False, **kwargs)[0]
            tapped = self._tapped
        finally:
            self._tapped = None
        if layers == "all":  # encoder levels, shallow to deep, then the bottleneck
            return out, [tapped[name] for name in self.feature_taps()]
        return out, (tapped[self.bottleneck_tap()] if layers else None)


class MLPDenoiser(DenoiserMixin, ModelMixin, ConfigMixin):
    """An EDM-preconditioned MLP denoiser for low-dimensional data (the toy distributions).

    ``F(c_in x, c_noise, cond)`` is a residual SiLU MLP whose input is the point concatenated with a Fourier
    embedding of c_noise, a class embedding (null index ``num_classes``) and scalar embeddings.
    """

    @register_to_config
    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, num_classes: int | None = None,
                 scalar_names: list | None = None, embed_dim: int = 32, sigma_data: float = SIGMA_DATA,
                 parameterization: str = "edm", prediction_type: str = "epsilon", c_noise_scale: float = 1.0,
                 data_shift: float = 0.0, data_scale: float = 1.0):
        super().__init__()
        self._check_parameterization(parameterization, prediction_type)
        if parameterization != "edm":
            raise ValueError("MLPDenoiser is trained in the EDM parameterisation only")
        n_scalars = len(scalar_names or [])
        self.register_buffer("freqs", torch.randn(embed_dim // 2, generator=torch.Generator().manual_seed(0)) * 4.0)
        self.class_embed = nn.Embedding(num_classes + 1, embed_dim) if num_classes is not None else None
        in_dim = dim + embed_dim * (1 + (num_classes is not None) + n_scalars)
        self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                    for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def _fourier(self, v):
        args = v.float()[:, None] * self.freqs[None] * 2 * math.pi
        return torch.cat([args.sin(), args.cos()], dim=1)

    def _check_input_shape(self, x):
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"MLPDenoiser expects points [B, {self.config.dim}], got {tuple(x.shape)}")

    def _network(self, net_input, net_time, cond, want_features):
        parts = [net_input, self._fourier(net_time)]
        labels = self.class_index(cond, net_input.shape[0], net_input.device)
        if labels is not None:
            parts.append(self.class_embed(labels))
        for n in self.config.scalar_names or []:
            parts.append(self._fourier(cond.scalars[n]))
        h = self.inp(torch.cat(parts, dim=1))
        for block in self.blocks:
            h = h + block(h)
        if feature_layers(want_features) == "all":
            raise ValueError("MLPDenoiser has one feature layer (its last hidden layer), no encoder levels; features "
                             "of every level need a UNetDenoiser")
        return self.out(h), (h if want_features else None)


def feature_layers(return_features) -> str | None:
    """``return_features`` of a denoiser call → None (no features), "bottleneck" (True) or "all" (every level)."""
    if return_features is False or return_features is None:
        return None
    if return_features is True or return_features == "bottleneck":
        return "bottleneck"
    if return_features == "all":
        return "all"
    raise ValueError(f"return_features must be False, True, 'bottleneck' or 'all', got {return_features!r}")


DENOISER_CLASSES = {"UNetDenoiser": UNetDenoiser, "MLPDenoiser": MLPDenoiser}


def sample_shape(denoiser, batch: int) -> tuple:
    """The shape of a batch in a denoiser's data space: [B, dim] for MLPs, [B, C, H, W] for UNets."""
    cfg = denoiser.config
    if "dim" in cfg:
        return (batch, cfg.dim)
    if hasattr(denoiser, "net") or hasattr(denoiser, "shared"):  # PipelineDenoiser, a LoRA view: their own shape
        return denoiser.sample_shape(batch)
    ucfg = denoiser.unet.config
    size = ucfg.sample_size if isinstance(ucfg.sample_size, (list, tuple)) else (ucfg.sample_size,) * 2
    return (batch, ucfg.in_channels, *size)


def build_denoiser(class_name: str, config: dict) -> nn.Module:
    if class_name not in DENOISER_CLASSES:
        raise ValueError(f"unknown denoiser class {class_name!r}; choose one of {sorted(DENOISER_CLASSES)}")
    return DENOISER_CLASSES[class_name].from_config({k: v for k, v in config.items() if not k.startswith("_")})


def with_scalar_condition(denoiser, name: str, time_cond_proj_dim: int = 64):
    """A copy of ``denoiser`` that also takes the scalar condition ``name`` (e.g. SMT's α, GFT's β), with that path
    zero-initialised: the copy equals the original for every value of the new scalar until it is trained.

    MLPDenoiser: the input layer gains zero columns for the scalar's embedding. UNetDenoiser over a
    UNet2DConditionModel: the scalars enter through ``timestep_cond`` into ``time_embedding.cond_proj``, created (or
    widened) with zeros. A UNet2DModel has no such input: build the network with ``model.kind=unet_cond``.
    """
    cfg = {k: v for k, v in dict(denoiser.config).items() if not k.startswith("_")}
    names = list(cfg.get("scalar_names") or [])
    if name in names:
        raise ValueError(f"{type(denoiser).__name__} already takes the scalar condition {name!r}")
    cfg["scalar_names"] = names + [name]
    state = denoiser.state_dict()
    if isinstance(denoiser, MLPDenoiser):
        new = MLPDenoiser.from_config(cfg)
        w = new.inp.weight.detach().clone()
        w.zero_()
        w[:, : state["inp.weight"].shape[1]] = state["inp.weight"]  # scalar embeddings come last in the input
        state = dict(state, **{"inp.weight": w})
        new.load_state_dict(state)
        return _like(new, denoiser)
    if isinstance(denoiser, UNetDenoiser):
        if cfg["unet_class"] != "UNet2DConditionModel":
            raise ValueError(f"a scalar condition ({name!r}) needs a UNet2DConditionModel backbone (model.kind=unet_cond); "
                             f"this denoiser wraps a {cfg['unet_class']}")
        unet_cfg = {k: v for k, v in dict(cfg["unet_config"]).items() if not k.startswith("_")}
        dim = unet_cfg.get("time_cond_proj_dim") or 0
        per = dim // len(names) if names else time_cond_proj_dim
        unet_cfg["time_cond_proj_dim"] = per * (len(names) + 1)
        cfg["unet_config"] = unet_cfg
        new = UNetDenoiser.from_config(cfg)
        key = "unet.time_embedding.cond_proj.weight"
        w = new.state_dict()[key].detach().clone().zero_()
        if key in state:
            w[:, : state[key].shape[1]] = state[key]
        new.load_state_dict(dict(state, **{key: w}))
        return _like(new, denoiser)
    raise ValueError(f"cannot add a scalar condition to a {type(denoiser).__name__}")


def _like(new, old):
    new = new.to(old.device)
    return new if new.dtype == old.dtype else new.to(old.dtype)
