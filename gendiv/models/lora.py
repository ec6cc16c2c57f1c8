"""LoRA adapters on one frozen base network (peft, through diffusers' own ``add_adapter``): the student and the fake
score of a distillation are named adapters on the teacher's weights, so one copy of the big network is in memory.

Each role is an :class:`AdapterView`, a denoiser that runs the shared base with its adapter active (the teacher's
view runs it with all adapters off) and whose parameters, ``state_dict`` and optimiser see only its adapter. Which
adapter is active is set on every call, and gradient checkpointing recomputes a block with the adapter that was
active when the block first ran (:func:`adapter_checkpoint`), so interleaved student / teacher / fake-score calls
stay exact under checkpointing (tests/test_lora.py).

The student exports in diffusers' LoRA format (:meth:`SharedLora.save_lora`): ``pipe.load_lora_weights(folder)`` on
the teacher's pipeline gives the student's network.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError

# attention projections: what DMD2's SDXL LoRA and LCM-LoRA adapt, and what every diffusers UNet and transformer has
DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class LoraSpec:
    """rank r, alpha α (the update is (α/r)·B·A; None: α = r), target module names (peft's ``target_modules``:
    suffixes or a regex)."""

    rank: int = 8
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"lora rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise UserError(f"lora alpha must be positive, got {self.alpha!r}")
        if not self.target_modules:
            raise UserError("lora target_modules must name at least one module")

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha or self.rank, target_modules=list(self.target_modules),
                          init_lora_weights=True)  # B = 0: every adapter starts as the base network


def base_network(denoiser) -> nn.Module:
    """The diffusers network inside a gendiv denoiser (``UNetDenoiser.unet``, ``PipelineDenoiser.net``)."""
    for name in ("unet", "net"):
        net = getattr(denoiser, name, None)
        if net is not None:
            return net
    raise UserError(f"{type(denoiser).__name__} holds no diffusers network; LoRA needs a UNetDenoiser or "
                     "PipelineDenoiser")


_UNKNOWN = object()


class SharedLora:
    """One frozen base denoiser and its named LoRA adapters.

    ``shared = SharedLora(teacher, LoraSpec(rank=64))``; ``shared.view(None)`` is the teacher, ``shared.view(name)``
    adds (once) and returns the adapter ``name`` as a trainable denoiser.
    """

    def __init__(self, denoiser, spec: LoraSpec | None = None, gradient_checkpointing: bool = False):
        self.denoiser, self.spec = denoiser.requires_grad_(False).eval(), spec or LoraSpec()
        self.net = base_network(denoiser)
        self._active: str | None = None
        self._views: dict = {}
        if gradient_checkpointing:
            self.net.enable_gradient_checkpointing(self._checkpoint)
            self.net.train()  # diffusers checkpoints only in training mode; the base has no dropout to switch

    def view(self, name: str | None) -> "AdapterView":
        if name not in self._views:
            if name is not None:
                with warnings.catch_warnings():  # several adapters on one model is the point here
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    self.net.add_adapter(self.spec.peft_config(), adapter_name=name)
                self._active = _UNKNOWN  # add_adapter switches adapters and their requires_grad
            self._views[name] = AdapterView(self, name)
            for view in self._views.values():
                view.requires_grad_(True)
        return self._views[name]

    def shard(self, mesh=None) -> "SharedLora":
        """FSDP2 over the base and every adapter added so far (``sharding.shard_denoiser``); the views then see the
        sharded parameters. Add the adapters (``view(name)``) before, as sharding covers the parameters it finds."""
        from .sharding import shard_denoiser

        shard_denoiser(self.denoiser, mesh)
        for name, view in self._views.items():
            view.lora = nn.ParameterDict(self.adapter_parameters(name) if name is not None else {})
        return self

    def student(self, sigma_init: float, name: str = "student") -> "LoraOneStepGenerator":
        """The one-step generator G(z) = D_student(σ_init·z, σ_init) on adapter ``name``."""
        return LoraOneStepGenerator(self.view(name), sigma_init)

    def score_network(self) -> "AdapterView":
        """A fresh adapter for another trained score network (fake score, ...): ``score``, ``score_1``, ..."""
        taken = sum(1 for n in self._views if n is not None and n.startswith("score"))
        return self.view("score" if taken == 0 else f"score_{taken}")

    def copy_adapter(self, source: str, target: str) -> "AdapterView":
        """Adapter ``target`` (added if new) set equal to ``source``: an EMA of the student without a second base."""
        view = self.view(target)
        src = self.view(source).lora
        with torch.no_grad():
            for key, p in view.lora.items():
                p.copy_(src[key.replace(f"/{target}/", f"/{source}/")])
        return view

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        marker = f".{name}."
        return {key.replace(".", "/"): p for key, p in self.net.named_parameters() if marker in key}

    @contextlib.contextmanager
    def active(self, name: str | None):
        """Run the base with adapter ``name`` (None: none) and restore the previous choice afterwards; trainability
        (``requires_grad``) is never changed by the switch."""
        previous = self._active
        self._switch(name)
        try:
            yield
        finally:
            if previous is not _UNKNOWN:
                self._switch(previous)

    def _switch(self, name: str | None):
        from peft.tuners.tuners_utils import BaseTunerLayer

        if name == self._active and name is not None:
            return
        trainable = {p: p.requires_grad for p in self.net.parameters()}
        for module in self.net.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(name is not None)
                if name is not None:
                    module.set_adapter(name)
        for p, flag in trainable.items():
            p.requires_grad_(flag)
        self._active = name

    def _checkpoint(self, module, *args):
        """diffusers' gradient-checkpointing hook: recompute ``module`` under the adapter active now."""
        name = self._active

        def run(*inputs):
            with self.active(name):
                return module(*inputs)

        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)

    def save_lora(self, folder, name: str, pipeline_class, write: bool = True) -> None:
        """Adapter ``name`` in diffusers' LoRA format (``pytorch_lora_weights.safetensors`` with the adapter's rank,
        alpha and targets as metadata), for ``pipeline_class`` (the teacher's pipeline class). Sharded adapters are
        gathered whole first, a collective: call it on every process, with ``write`` true on one."""
        from peft.utils import get_peft_model_state_dict

        from .sharding import is_sharded

        state = {k: v.full_tensor() if is_sharded(v) else v
                 for k, v in get_peft_model_state_dict(self.net, adapter_name=name).items()}
        if not write:
            return
        metadata = self.net.peft_config[name].to_dict()
        is_unet = hasattr(self.denoiser, "unet") or self.denoiser.config.get("family") == "sdxl"
        prefix = "unet" if is_unet else "transformer"
        pipeline_class.save_lora_weights(str(folder), **{f"{prefix}_lora_layers": state,
                                                         f"{prefix}_lora_adapter_metadata": metadata})


class AdapterView(nn.Module):
    """The shared base denoiser with one adapter active (``adapter=None``: the frozen teacher). Only the adapter's
    weights are this module's parameters; moving the view moves the base with it."""

    def __init__(self, shared: SharedLora, adapter: str | None):
        super().__init__()
        object.__setattr__(self, "shared", shared)  # not a submodule: the base's weights are not this view's
        self.adapter = adapter
        self.lora = nn.ParameterDict(shared.adapter_parameters(adapter) if adapter is not None else {})

    @property
    def config(self):
        return self.shared.denoiser.config

    @property
    def dtype(self):
        return self.shared.denoiser.dtype

    @property
    def device(self):
        return self.shared.denoiser.device

    def _apply(self, fn, *args, **kwargs):
        self.shared.denoiser._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def sample_shape(self, batch: int) -> tuple:
        from .denoiser import sample_shape

        return sample_shape(self.shared.denoiser, batch)

    def forward(self, x, sigma, cond=None, return_features: bool = False):
        with self.shared.active(self.adapter):
            return self.shared.denoiser(x, sigma, cond, return_features=return_features)


class LoraOneStepGenerator(nn.Module):
    """G(z, cond) = D_student(σ_init·z, σ_init, cond) with D_student an :class:`AdapterView` (the LoRA form of
    ``OneStepGenerator``)."""

    def __init__(self, backbone: AdapterView, sigma_init: float):
        super().__init__()
        self.backbone, self.sigma_init = backbone, float(sigma_init)

    def sample_shape(self, batch: int) -> tuple:
        return self.backbone.sample_shape(batch)

    @property
    def num_classes(self):
        return self.backbone.config.num_classes

    @property
    def device(self):
        return self.backbone.device

    @property
    def dtype(self):
        return self.backbone.dtype

    def forward(self, z: torch.Tensor, cond=None, return_features: bool = False):
        return self.backbone(z * self.sigma_init, self.sigma_init, cond, return_features=return_features)
