"""Few-step students as diffusers users call them: ``FewStepPipeline(student)(batch_size=…, num_inference_steps=…)``.

``FewStepScheduler`` holds the σ grid [σ_init, σ₁, …, σ_{k−1}] that a few-step method recorded in the student's config
(``OneStepGenerator.config.sampling_sigmas``) and steps on it in one of two ways (docs/adding_a_method.md §9):

* ``consistency`` (CD, iCT, sCM, few-step DMD/DMD2): the student's output at σ_i is a clean estimate x̂₀; the next
  pass sees it re-noised, x̂₀ + σ_{i+1}·n; the last output is the sample.
* ``flow_map`` (MeanFlow): the student's output at σ_i with r = σ_{i+1}/σ_i is X_θ, and the jump is deterministic,
  x_{σ_{i+1}} = r·x + (1 − r)·X_θ, down to σ = 0.

Another number of steps than the recorded one uses the inner points of a Karras grid (ρ = 7) from σ_init to
``sigma_min``. The pipeline loads the trainer's exported one-step folder too (``FewStepPipeline.from_pretrained``):
without a saved scheduler it builds one from the student's config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..condition import Condition
from ..models.generator import FLOW_MAP_RATIO
from ..space import karras_sigmas
from .base import LOADER_MODULE, PipelineBase
from .output import check_generator, check_positive_int, initial_noise, make_class_labels, postprocess, randn

KINDS = ("consistency", "flow_map")


@dataclass
class FewStepSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor     # the next pass's input (consistency: re-noised x̂₀; flow_map: x at σ_{i+1})
    pred_original_sample: torch.Tensor


class FewStepScheduler(SchedulerMixin, ConfigMixin):
    """The σ grid of a few-step student and its step rule (``kind``: consistency | flow_map)."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, sigmas: list | None = None, kind: str = "consistency", sigma_max: float = 80.0,
                 sigma_min: float = 0.002, rho: float = 7.0):
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
        grid = list(sigmas) if sigmas else [sigma_max]
        if any(s <= 0 for s in grid) or any(a <= b for a, b in zip(grid, grid[1:])):
            raise ValueError(f"sigmas must be positive and decreasing, got {grid}")
        self.set_timesteps(len(grid))

    @classmethod
    def from_student(cls, student) -> "FewStepScheduler":
        """The grid a few-step method recorded in the student's config (one pass at σ_init if none)."""
        cfg = student.config
        names = getattr(student.backbone.config, "scalar_names", None) or []
        return cls(sigmas=cfg.get("sampling_sigmas") or [cfg.sigma_init], sigma_max=cfg.sigma_init,
                   kind="flow_map" if FLOW_MAP_RATIO in names else "consistency")

    def set_timesteps(self, num_inference_steps: int | None = None, device=None):
        """σ's of the k passes, then 0: the recorded grid, or a Karras grid's inner points for another k."""
        recorded = list(self.config.sigmas) if self.config.sigmas else [self.config.sigma_max]
        k = len(recorded) if num_inference_steps is None else check_positive_int(num_inference_steps,
                                                                                 "num_inference_steps")
        if k == len(recorded):
            grid = recorded
        else:
            c = self.config
            grid = karras_sigmas(k + 1, c.sigma_min, recorded[0], c.rho, append_zero=False)[:-1].tolist()
        self.num_inference_steps = k
        self.sigmas = torch.tensor([*grid, 0.0], dtype=torch.float32, device=device)
        self.timesteps = self.sigmas[:-1]

    def index_of(self, timestep) -> int:
        matches = (self.timesteps - float(timestep)).abs() <= 1e-6 * float(timestep)
        if not matches.any():
            raise ValueError(f"timestep {float(timestep)} is not on the grid {self.timesteps.tolist()}")
        return int(matches.nonzero()[0])

    def ratio(self, timestep) -> float:
        """r = σ_{i+1}/σ_i, the flow-map student's scalar condition at this pass."""
        i = self.index_of(timestep)
        return float(self.sigmas[i + 1] / self.sigmas[i])

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        i = self.index_of(timestep)
        sigma_next = float(self.sigmas[i + 1])
        if self.config.kind == "flow_map":
            r = sigma_next / float(self.sigmas[i])
            prev = r * sample + (1 - r) * model_output
        elif sigma_next > 0:
            prev = model_output + sigma_next * randn(model_output.shape, generator, model_output.device)
        else:
            prev = model_output
        return FewStepSchedulerOutput(prev, model_output) if return_dict else (prev,)


class FewStepPipeline(PipelineBase):
    """``pipe(batch_size=..., class_labels=..., num_inference_steps=k).images`` for a few-step
    :class:`~gendiv.models.OneStepGenerator` (``num_inference_steps`` defaults to the student's recorded grid)."""

    model_cpu_offload_seq = "student"
    _optional_components = ["scheduler"]

    def __init__(self, student, scheduler: FewStepScheduler | None = None):
        super().__init__()
        self.register_modules(student=student, scheduler=scheduler or FewStepScheduler.from_student(student))

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, class_labels=None, num_inference_steps: int | None = None,
                 generator: torch.Generator | list | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, num_images_per_prompt: int = 1,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ("latents",)):
        """Generate samples in ``num_inference_steps`` student passes (see ``OneStepPipeline`` for the arguments
        shared with it; ``latents`` is the unit-scale noise z, scaled by the first σ)."""
        per_label = check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        total = check_positive_int(batch_size, "batch_size") * per_label
        check_generator(generator, total)
        names = self._callback_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = self.student.sample_shape(total)
        labels = make_class_labels(class_labels, batch_size, self.student.num_classes, device, generator, per_label)
        x = initial_noise(shape, generator, device, latents) * self.scheduler.timesteps[0]
        self._num_timesteps = len(self.scheduler.timesteps)
        for i, sigma in enumerate(self.progress_bar(self.scheduler.timesteps)):
            cond = self._condition(labels, total, self.scheduler.ratio(sigma), device)
            x0 = self.student(x, cond, sigma=float(sigma))
            x = self.scheduler.step(x0, sigma, x, generator).prev_sample
            x = self._step_end(callback_on_step_end, names, i, sigma, {"latents": x})["latents"]
        out = postprocess(x, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)

    def _condition(self, labels, batch: int, ratio: float, device) -> Condition | None:
        scalars = {}
        if self.scheduler.config.kind == "flow_map":
            scalars[FLOW_MAP_RATIO] = torch.full((batch,), ratio, device=device)
        if labels is None and not scalars:
            return None
        return Condition(class_labels=labels, scalars=scalars)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As every gendiv pipeline's, with this class added to the import diffusers' remote-code route reads."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        loader = Path(save_directory) / f"{LOADER_MODULE}.py"
        loader.write_text(loader.read_text() + "from gendiv.pipelines.pipeline_few_step import FewStepPipeline, "
                          "FewStepScheduler  # noqa: F401,E402\n")
        return out
