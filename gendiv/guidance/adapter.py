"""Adapter guidance distillation (AGD; docs/guidance.md §6): one network pass that gives the teacher's two-pass CFG.

The teacher's weights stay frozen. A small adapter, conditioned on the guidance scale s, is trained so that

    D_A(x, σ, c, s) ≈ D(x, σ | ∅) + s·(D(x, σ | c) − D(x, σ | ∅))          (CFG, docs/methods.md §5)

on the states that CFG-guided sampling of the teacher visits (``gendiv/training/guidance_adapter.py``). Two forms:

* :class:`ResidualGuidanceAdapter`, for a teacher whose inside cannot be adapted (a closed-form mixture) or a small
  MLP denoiser: D_A = D(x, σ | c) + (s − 1)·c_out(σ)·F(x, D(x, σ | c), σ, c, s), a small MLP F on the teacher's one
  conditional pass. At s = 1 it is the conditional teacher exactly, as CFG is.
* :class:`LoraGuidanceAdapter`, for diffusers UNets: peft LoRA on the teacher's attention projections (one base in
  memory, ``models/lora.py``) and an embedding of s added to the UNet's time embedding; both start at zero, so the
  untrained adapter is the conditional teacher.

Both read s as the guidance-free scalar ``guidance`` (w = s − 1, ``condition.with_guidance_scale``), so
``GenDivPipeline(guidance_scale=s)`` samples them at one network pass per step, as it samples a GFT model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, FrozenDict, register_to_config
from safetensors.torch import load_file, save_file
from torch import nn

from ..condition import GUIDANCE_SCALAR, Condition, as_condition
from ..errors import UserError
from ..space import append_dims, as_sigma_batch, edm_preconditioning

ADAPTER_CONFIG_NAME = "guidance_adapter_config.json"
ADAPTER_WEIGHTS_NAME = "guidance_adapter.safetensors"


def cfg_prediction(denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: Condition, scale: torch.Tensor):
    """The teacher's two-pass CFG, D_∅ + s·(D_c − D_∅), with one scale per sample (``ClassifierFreeGuidedDenoiser``
    takes one scale for the batch); both passes in one batch, the null pass marked by ``Condition.drop``."""
    both = Condition.cat([cond, cond.with_null()])
    pos, neg = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
    return neg + append_dims(scale.to(x.dtype), x.ndim) * (pos - neg)


def split_guidance(cond: Condition | None, batch: int) -> tuple[torch.Tensor, Condition | None]:
    """(w = s − 1 per sample, the condition without it): what an adapter reads and what its teacher is called with."""
    if cond is None or GUIDANCE_SCALAR not in cond.scalars:
        raise ValueError(f"a guidance adapter needs the scalar condition {GUIDANCE_SCALAR!r} (w = s − 1); call it "
                         "with condition.with_guidance_scale(cond, s, ...) or sample it with guidance_scale=s")
    w = cond.scalars[GUIDANCE_SCALAR]
    if w.shape != (batch,):
        raise ValueError(f"scalar condition {GUIDANCE_SCALAR!r} must have shape [{batch}], got {tuple(w.shape)}")
    rest = {k: v for k, v in cond.scalars.items() if k != GUIDANCE_SCALAR}
    return w, Condition(cond.class_labels, cond.drop, rest, cond.text_embeds)


def guided_samples(cond: Condition, batch: int, device) -> torch.Tensor:
    """True where a sample is conditional; CFG leaves samples marked unconditional (``drop``) as the teacher's."""
    if cond.drop is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return ~cond.drop.to(device)


class FourierFeatures(nn.Module):
    """sin/cos of a scalar at fixed random frequencies (as MLPDenoiser embeds c_noise)."""

    def __init__(self, dim: int, scale: float = 4.0, seed: int = 0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2, generator=torch.Generator().manual_seed(seed)) * scale)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        args = v.float()[:, None] * self.freqs[None] * 2 * math.pi
        return torch.cat([args.sin(), args.cos()], dim=1)


class ScaleEmbedding(nn.Module):
    """w = s − 1 ↦ a vector of ``out_dim``: Fourier features → SiLU MLP, the last layer zero-initialised (the
    embedding starts as 0, so an added embedding leaves the network as it was)."""

    def __init__(self, out_dim: int, embed_dim: int = 32, hidden: int = 128):
        super().__init__()
        self.features = FourierFeatures(embed_dim, scale=1.0, seed=1)
        self.mlp = nn.Sequential(nn.Linear(embed_dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.features(w), w.float()[:, None]], dim=1))


def _base_denoiser(base_class: str, base_config: dict):
    if base_class == "analytic":
        from ..toy import AnalyticDenoiser, get_distribution

        return AnalyticDenoiser(get_distribution(base_config["distribution"]))
    from ..models.denoiser import build_denoiser

    return build_denoiser(base_class, base_config)


class ResidualGuidanceAdapter(ModelMixin, ConfigMixin):
    """D_A(x, σ, c, s) = D(x, σ | c) + (s − 1)·c_out(σ)·F(c_in·x, D(x, σ | c)/σ_d, c_noise, c, s) over a frozen
    teacher D (EDM's c_in, c_out, c_noise: docs/methods.md §0.2; c_out·F makes F's target of unit order at every σ).

    ``base_class``: ``"analytic"`` (``base_config = {"distribution": name}``: a closed-form mixture, rebuilt by
    name) or a gendiv denoiser class (``"MLPDenoiser"``; its weights are saved with the adapter's). Build one for a
    teacher with :meth:`for_teacher`. Samples marked unconditional (``drop``) are the teacher's, as CFG's are.
    """

    @register_to_config
    def __init__(self, base_class: str = "analytic", base_config: dict | None = None, hidden: int = 128,
                 depth: int = 3, embed_dim: int = 32, dim: int | None = None, num_classes: int | None = None,
                 sigma_data: float | None = None, scalar_names: list | None = None):
        super().__init__()
        self.base = _base_denoiser(base_class, dict(base_config or {"distribution": "conditional2d"}))
        self.base.requires_grad_(False).eval()
        bc = self.base.config
        if bc.get("dim") is None or bc.get("num_classes") is None:
            raise UserError(f"a residual guidance adapter needs a class-conditional point denoiser (dim and "
                            f"num_classes set); {type(self.base).__name__} has dim={bc.get('dim')}, "
                            f"num_classes={bc.get('num_classes')}")
        # what pipelines read of a denoiser's config, taken from the teacher
        self.register_to_config(dim=bc["dim"], num_classes=bc["num_classes"], sigma_data=bc["sigma_data"],
                                scalar_names=[GUIDANCE_SCALAR])
        self.time_features, self.scale_features = FourierFeatures(embed_dim), FourierFeatures(embed_dim, 1.0, 1)
        self.class_embed = nn.Embedding(bc["num_classes"] + 1, embed_dim)
        self.inp = nn.Linear(2 * bc["dim"] + 3 * embed_dim + 1, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, bc["dim"]))
        nn.init.zeros_(self.out[-1].weight)  # the untrained adapter is the conditional teacher
        nn.init.zeros_(self.out[-1].bias)

    @classmethod
    def for_teacher(cls, teacher, **kwargs) -> "ResidualGuidanceAdapter":
        from ..models.denoiser import MLPDenoiser
        from ..toy import AnalyticDenoiser

        if isinstance(teacher, AnalyticDenoiser):
            return cls(base_class="analytic", base_config={"distribution": teacher.distribution.name}, **kwargs)
        if isinstance(teacher, MLPDenoiser):
            config = {k: v for k, v in dict(teacher.config).items() if not k.startswith("_")}
            adapter = cls(base_class=type(teacher).__name__, base_config=config, **kwargs)
            adapter.base.load_state_dict(teacher.state_dict())
            return adapter
        raise UserError(f"a residual guidance adapter sits on a closed-form mixture or an MLPDenoiser; for a "
                        f"{type(teacher).__name__} use LoraGuidanceAdapter (adapter.kind=lora)")

    @property
    def teacher(self) -> nn.Module:
        return self.base

    def sample_shape(self, batch: int) -> tuple:
        return (batch, self.config.dim)

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        batch = x.shape[0]
        w, plain = split_guidance(as_condition(cond), batch)
        sigma = as_sigma_batch(sigma, batch, device=x.device, dtype=x.dtype)
        denoised = self.base(x, sigma, plain)
        _, c_out, c_in, c_noise = edm_preconditioning(append_dims(sigma, x.ndim), self.config.sigma_data)
        labels = plain.class_labels if plain.class_labels is not None else torch.zeros(batch, dtype=torch.long)
        guided = guided_samples(plain, batch, x.device)
        idx = torch.where(guided, labels.to(x.device), self.config.num_classes)
        parts = [c_in * x, denoised / self.config.sigma_data, self.time_features(c_noise.flatten()),
                 self.class_embed(idx), self.scale_features(w), w.float()[:, None]]
        h = self.inp(torch.cat([p.to(self.inp.weight.dtype) for p in parts], dim=1))
        for block in self.blocks:
            h = h + block(h)
        correction = append_dims(w * guided, x.ndim) * c_out * self.out(h)
        out = denoised + correction.to(denoised.dtype)
        return (out, h) if return_features else out


class LoraGuidanceAdapter(nn.Module):
    """A diffusers UNet teacher with a LoRA adapter (``adapter_name``) and a scale embedding added to the output of
    its ``time_embedding`` (the hook point diffusers UNets share, as TSG's): D_A(x, σ, c, s) in one pass. The base is
    frozen and shared: :attr:`teacher` is the same network with the adapter off.

    ``save_pretrained(folder)`` writes the adapter's weights (LoRA and scale embedding) and settings;
    ``from_pretrained(folder, teacher)`` puts them on a freshly loaded teacher.
    """

    def __init__(self, teacher, spec=None, embed_dim: int = 32, hidden: int = 128, adapter_name: str = "guidance"):
        from ..models.lora import LoraSpec, SharedLora, base_network

        super().__init__()
        self.spec = spec or LoraSpec()
        self.settings = {"rank": self.spec.rank, "alpha": self.spec.alpha,
                         "target_modules": list(self.spec.target_modules), "embed_dim": embed_dim, "hidden": hidden,
                         "adapter_name": adapter_name}
        shared = SharedLora(teacher, self.spec)
        embedding = getattr(base_network(teacher), "time_embedding", None)
        if embedding is None or not hasattr(embedding, "linear_2"):
            raise UserError(f"a LoRA guidance adapter adds the scale to a UNet's time embedding; "
                            f"{type(base_network(teacher)).__name__} has no time_embedding.linear_2")
        self.adapted, self.teacher = shared.view(adapter_name), shared.view(None)  # the teacher view has no weights
        self._embedding = [embedding]  # a hook point, not a submodule (it belongs to the base)
        self.scale_embedding = ScaleEmbedding(embedding.linear_2.out_features, embed_dim, hidden)

    @property
    def config(self):
        """The teacher's config with the guidance scalar added: pipelines and samplers pass s as w = s − 1."""
        return FrozenDict({**self.teacher.config, "scalar_names": [GUIDANCE_SCALAR]})

    def sample_shape(self, batch: int) -> tuple:
        return self.teacher.sample_shape(batch)

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        w, plain = split_guidance(as_condition(cond), x.shape[0])
        shift = self.scale_embedding(w) * guided_samples(plain, len(w), w.device)[:, None]

        def add_scale(module, inputs, output):
            return output + shift.to(output.dtype)

        handle = self._embedding[0].register_forward_hook(add_scale)
        try:
            return self.adapted(x, sigma, plain, return_features=return_features)
        finally:
            handle.remove()

    def save_pretrained(self, folder) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(folder / ADAPTER_WEIGHTS_NAME))
        (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(self.settings, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder, teacher) -> "LoraGuidanceAdapter":
        from ..models.lora import LoraSpec

        folder = Path(folder)
        if not (folder / ADAPTER_CONFIG_NAME).is_file():
            raise UserError(f"{folder} holds no guidance adapter ({ADAPTER_CONFIG_NAME} missing)")
        s = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
        spec = LoraSpec(rank=s["rank"], alpha=s["alpha"], target_modules=s["target_modules"])
        adapter = cls(teacher, spec, s["embed_dim"], s["hidden"], s["adapter_name"])
        adapter.load_state_dict(load_file(str(folder / ADAPTER_WEIGHTS_NAME)))
        return adapter
