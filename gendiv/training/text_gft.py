"""Guidance-free training (GFT) of a text-conditioned teacher: a StableDiffusionPipeline-shaped folder fine-tuned so
that its UNet samples CFG at scale s in one pass per step (docs/guidance_free.md, "Text teachers").

The objective is the class-conditional one (objectives/guidance_free.py) with two substitutions, as in the GFT
paper's Stable Diffusion case: the unconditional branch is the empty prompt's embedding (the denoiser's
``null_text_embeds``, what StableDiffusionPipeline encodes for ``""``), and β enters through the UNet's time
embedding: the guidance embedding of w = 1/β − 1 passes ``time_embedding.cond_proj`` (created zero-initialised, so
the model starts equal to the teacher for every β) and is added to the sinusoidal timestep embedding. That is the input
StableDiffusionPipeline feeds a UNet with ``time_cond_proj_dim``, and it then skips CFG's second pass, so the exported
folder samples guided with the stock pipeline: ``pipe(prompt, guidance_scale=s)``.

``objective: edm`` trains the same model with the plain conditional loss (prompt dropout to the empty prompt): a
conditional teacher to start GFT from, or an equal-budget control.

    python -m gendiv.training.text_gft --config my.yaml teacher=path/to/sd_folder data.source=folder:captions
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..condition import GUIDANCE_SCALAR, Condition, with_guidance_scale
from ..errors import InputError
from ..fileio import read_image, to_unit_interval
from ..models import with_scalar_condition
from ..models.latent_text import encode_prompts, is_text_pipeline_folder, latent_text_teacher_from_folder
from ..objectives import denoising_loss
from ..objectives.guidance_free import gft_loss
from ..sampling import sample
from ..space import SIGMA_SAMPLERS, sample_sigma, vp_sigmas_from_alphas_cumprod
from ..toy import GaussianMixture, sliced_wasserstein2
from .config import ConfigError, check, check_optimizer, load_config, to_dict
from .data import _resize
from .ema import EmaProfile
from .loop import RunConfig, TrainingLoop

TEXT_OBJECTIVES = ("gft", "edm")
TOY_TEXT_SOURCE = "toy:two_prompts"


@dataclass
class TextDataConfig:
    source: str = TOY_TEXT_SOURCE  # toy:two_prompts (exact suite) | folder:<path> with metadata.jsonl (file_name, text)
    image_size: int | None = None   # folder: resize and centre-crop to this square pixel size (the VAE's input)

    def __post_init__(self):
        check(self.source == TOY_TEXT_SOURCE or self.source.startswith("folder:"),
              f"data.source must be {TOY_TEXT_SOURCE} or folder:<path>, got {self.source!r}")
        check(self.image_size is None or self.image_size >= 8,
              f"data.image_size must be ≥ 8 or null, got {self.image_size}")


@dataclass
class TextOptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    ema_decay: float = 0.999
    ema_std: float | None = None               # σ_rel of EDM2's power-function EMA; replaces ema_decay
    sigma_sampler: str = "teacher"    # teacher: σ of a uniform draw of the VP teacher's training timesteps (how SD
                                      # trains); or one of gendiv's σ samplers (lognormal, log_uniform, ...)
    cond_drop_prob: float = 0.1       # prompt → empty prompt: the unconditional branch keeps learning

    def __post_init__(self):
        check_optimizer("optim", [("lr", self.lr)], self.betas, self.weight_decay, self.ema_decay, self.ema_std)
        check(self.sigma_sampler in ("teacher", *SIGMA_SAMPLERS), f"optim.sigma_sampler must be teacher or one of "
              f"{sorted(SIGMA_SAMPLERS)}, got {self.sigma_sampler!r}")
        check(0 <= self.cond_drop_prob <= 1, f"optim.cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")


@dataclass
class TextGFTOptions:
    beta_min: float = 0.2             # β ~ U(β_min, 1]: one model for guidance scales 1 ≤ s ≤ 1/β_min
    time_cond_proj_dim: int = 512     # width of the guidance embedding added to the timestep embedding (GFT's SD 1.5)
    eval_guidance_scale: float = 3.0  # the scale the evaluation samples at (one pass per step)
    eval_steps: int = 18              # Heun steps of the evaluation sampler

    def __post_init__(self):
        check(0 < self.beta_min < 1, f"gft.beta_min must be in (0, 1) (guidance scales up to 1/beta_min), "
              f"got {self.beta_min}")
        check(self.time_cond_proj_dim >= 4 and self.time_cond_proj_dim % 2 == 0,
              f"gft.time_cond_proj_dim must be an even number ≥ 4, got {self.time_cond_proj_dim}")
        check(self.eval_guidance_scale >= 1, f"gft.eval_guidance_scale must be ≥ 1, got {self.eval_guidance_scale}")
        check(self.eval_steps >= 1, f"gft.eval_steps must be ≥ 1, got {self.eval_steps}")


@dataclass
class TextTrainConfig:
    teacher: str = ""                 # a StableDiffusionPipeline-shaped folder (unet, scheduler, vae, text encoder)
    objective: str = "gft"            # gft | edm (plain conditional loss)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/text_gft", steps=1000, batch_size=16))
    data: TextDataConfig = field(default_factory=TextDataConfig)
    optim: TextOptimConfig = field(default_factory=TextOptimConfig)
    gft: TextGFTOptions = field(default_factory=TextGFTOptions)

    def __post_init__(self):
        check(self.objective in TEXT_OBJECTIVES,
              f"objective must be one of {list(TEXT_OBJECTIVES)}, got {self.objective!r}")
        check(not self.teacher or is_text_pipeline_folder(self.teacher), f"teacher={self.teacher} is not a "
              "text-conditioned pipeline folder (no model_index.json with a text_encoder)")


# ---------------------------------------------------------------------------------------------------------------
# data: latents the UNet sees, each with the index of its prompt
# ---------------------------------------------------------------------------------------------------------------
class PromptedLatents:
    """Latents [N, C, H, W] with one prompt index each; ``prompts`` holds the distinct prompts."""

    def __init__(self, latents: torch.Tensor, prompt_index: torch.Tensor, prompts: list[str], name: str):
        self.latents, self.prompt_index, self.prompts, self.name = latents, prompt_index, prompts, name
        self.shape = tuple(latents.shape[1:])

    def sample_batch(self, batch: int, generator: torch.Generator):
        idx = torch.randint(0, len(self.latents), (batch,), generator=generator)
        return self.latents[idx], self.prompt_index[idx]


class TwoPromptSuite:
    """The exact suite through the text path: a Gaussian mixture in the UNet's latent space whose two classes are
    the prompts "cat" and "dog". Component B is shared (weight .4 in each class), so CFG at s > 1 moves mass from B
    to the class's own component: the guided target differs visibly from the conditional one."""

    prompts = ["cat", "dog"]

    def __init__(self, shape: tuple):
        self.shape = tuple(shape)
        d = math.prod(shape)
        g = torch.Generator().manual_seed(0)
        u = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))[0].T  # two orthonormal directions
        means = torch.stack([1.5 * u[0], 1.5 * u[1], 1.5 * u[1], -1.5 * u[0]])        # A, B, B, C
        self.dist = GaussianMixture(means, variances=0.04, weights=[0.3, 0.2, 0.2, 0.3], component_class=[0, 0, 1, 1],
                                    name=TOY_TEXT_SOURCE)

    def sample_batch(self, batch: int, generator: torch.Generator):
        labels = self.dist.sample_labels(batch, generator)
        return self.dist.sample(batch, generator, class_labels=labels).view(batch, *self.shape), labels


def smallest_latent_shape(unet) -> tuple:
    """The smallest square latent the UNet accepts: each of its down levels halves the size once."""
    size = 2 ** (len(unet.config.block_out_channels) - 1)
    return (unet.config.in_channels, size, size)


def load_captioned_folder(path: Path, image_size: int | None, vae) -> PromptedLatents:
    """Images listed in ``metadata.jsonl`` (one {"file_name", "text"} per line, the Hugging Face imagefolder layout),
    encoded once to the UNet's latents: (mean of the VAE's posterior − shift_factor) · scaling_factor."""
    meta = path / "metadata.jsonl"
    if not meta.is_file():
        raise InputError(f"folder:{path} has no metadata.jsonl (one {{\"file_name\": ..., \"text\": ...}} per line)")
    rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    bad = [r for r in rows if not isinstance(r, dict) or not {"file_name", "text"} <= set(r)]
    if not rows or bad:
        raise InputError(f"folder:{path}/metadata.jsonl: every line needs file_name and text "
                         f"({'no lines' if not rows else f'first bad line: {bad[0]!r}'})")
    missing = [r["file_name"] for r in rows if not (path / r["file_name"]).is_file()]
    if missing:
        raise InputError(f"folder:{path}: {len(missing)} listed image(s) missing, first {missing[0]!r}")
    images = [torch.from_numpy(to_unit_interval(read_image(path / r["file_name"], "RGB").transpose(2, 0, 1)) * 2 - 1)
              for r in rows]
    if image_size is None and len({tuple(i.shape) for i in images}) > 1:
        raise InputError(f"folder:{path} holds images of several sizes; set data.image_size")
    pixels = torch.stack([_resize(i[None].float(), image_size)[0] for i in images])
    with torch.no_grad():
        z = torch.cat([vae.encode(b.to(vae.dtype)).latent_dist.mean for b in pixels.split(16)]).float()
    latents = (z - (vae.config.get("shift_factor") or 0.0)) * vae.config.scaling_factor
    prompts = sorted({r["text"] for r in rows})
    index = torch.tensor([prompts.index(r["text"]) for r in rows])
    return PromptedLatents(latents, index, prompts, f"folder:{path}")


# ---------------------------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------------------------
def gft_text_denoiser(denoiser, time_cond_proj_dim: int):
    """The teacher's denoiser with the guidance input added (zero-initialised), or itself if it already has one (a
    GFT folder being trained further)."""
    if GUIDANCE_SCALAR in (denoiser.config.scalar_names or []):
        return denoiser
    return with_scalar_condition(denoiser, GUIDANCE_SCALAR, time_cond_proj_dim)


class TextTeacherTrainer(TrainingLoop):
    def __init__(self, cfg: TextTrainConfig):
        check(bool(cfg.teacher), "teacher must name a StableDiffusionPipeline-shaped folder (teacher=<path>)")
        super().__init__(cfg.run, to_dict(cfg), image_data=True)
        self.cfg = cfg
        self.teacher = latent_text_teacher_from_folder(cfg.teacher)  # text encoder and VAE frozen there
        den = self.teacher.denoiser
        if cfg.objective == "edm" and den.config.scalar_names:
            raise ConfigError(f"objective edm trains a plain conditional model, but teacher={cfg.teacher} takes "
                              f"{den.config.scalar_names} as inputs (a GFT folder): use objective gft")
        if cfg.optim.sigma_sampler == "teacher" and den.alphas_cumprod is None:
            raise ConfigError(f"optim.sigma_sampler=teacher needs a VP (DDPM-schedule) teacher; {cfg.teacher} is "
                              f"{den.config.parameterization}: choose one of {sorted(SIGMA_SAMPLERS)}")
        self.source = self._build_source()
        self.prompt_embeds = encode_prompts(self.teacher.tokenizer, self.teacher.text_encoder, self.source.prompts)
        model = gft_text_denoiser(den, cfg.gft.time_cond_proj_dim) if cfg.objective == "gft" else den
        model = self.speed_up(model.train())
        o = cfg.optim
        opt = self.optimizer(model.parameters(), o.lr, o.betas, o.weight_decay)
        self.model, self.opt = self.accelerator.prepare(model, opt)
        self.ema_model = self.add_ema("denoiser", self.model, EmaProfile(o.ema_decay, o.ema_std))

    def _build_source(self):
        data = self.cfg.data
        if data.source == TOY_TEXT_SOURCE:
            return TwoPromptSuite(smallest_latent_shape(self.teacher.denoiser.unet))
        return load_captioned_folder(Path(data.source.removeprefix("folder:")), data.image_size, self.teacher.vae)

    def condition(self, prompt_index: torch.Tensor, drop: torch.Tensor | None = None) -> Condition:
        return Condition(text_embeds=self.prompt_embeds[prompt_index], drop=drop)

    def draw_sigma(self, batch: int, generator) -> torch.Tensor:
        name = self.cfg.optim.sigma_sampler
        if name != "teacher":
            return sample_sigma(name, batch, generator=generator)
        grid = vp_sigmas_from_alphas_cumprod(self.teacher.denoiser.alphas_cumprod).float()
        return grid[torch.randint(0, len(grid), (batch,), generator=generator)]

    def loss(self, model, x0, cond, generator):
        sigma = self.draw_sigma(len(x0), generator).to(x0.device)
        if self.cfg.objective == "gft":
            return gft_loss(model, x0, cond, self.cfg.gft.beta_min, generator, sigma=sigma)
        return denoising_loss(model, x0, cond, sigma=sigma, generator=generator)

    def train_step(self) -> dict:
        dev = self.accelerator.device
        x0, prompt_index = self.source.sample_batch(self.run.batch_size, self.gen)
        drop = torch.rand(len(x0), generator=self.gen) < self.cfg.optim.cond_drop_prob
        with self.accelerator.autocast():
            loss = self.loss(self.model, x0.to(dev), self.condition(prompt_index, drop).to(dev), self.gen)
        self.check_finite("denoising loss", loss)
        grad_norm = self.clip_and_step(self.model, self.opt, loss, "denoiser")
        self.update_ema("denoiser")
        return {"loss": self.mean_over_processes(loss), "grad_norm": grad_norm}

    @torch.no_grad()
    def evaluate(self, final: bool) -> dict:
        """On the exact suite: sliced W₂ of one-pass samples at ``gft.eval_guidance_scale`` to exact CFG samples."""
        if not self.is_main or not isinstance(self.source, TwoPromptSuite):
            return {}
        s = self.cfg.gft.eval_guidance_scale
        x, target = guided_samples(self.ema_model, self.source, self.condition, s, 1000, self.cfg.gft.eval_steps,
                                   seed=self.run.seed + 1)
        return {f"sliced_w2_to_cfg_{s:g}": sliced_wasserstein2(x.flatten(1), target.flatten(1))}

    def export(self):
        if self.is_main:
            export_text_pipeline(self.cfg.teacher, self.ema_model, self.out / "pipeline")


def sampling_sigmas(denoiser) -> dict:
    """The σ range of the teacher's own schedule (a VP UNet never saw σ outside it)."""
    if denoiser.alphas_cumprod is None:
        return {}
    grid = vp_sigmas_from_alphas_cumprod(denoiser.alphas_cumprod)
    return {"sigma_min": float(grid[0]), "sigma_max": float(grid[-1])}


def exact_guided_samples(suite: TwoPromptSuite, labels: torch.Tensor, scale: float, steps: int, seed: int,
                         **grid) -> torch.Tensor:
    """Samples of the exact CFG denoiser at ``scale`` (the analytic mixture; scale 1: the exact conditional), shaped
    like the latents, with the noise a model sampled by ``sample`` at the same seed and grid gets."""
    from ..guidance import ClassifierFreeGuidedDenoiser
    from ..toy import AnalyticDenoiser

    exact = ClassifierFreeGuidedDenoiser(AnalyticDenoiser(suite.dist), scale)
    x = sample(exact, (len(labels), suite.dist.dim), num_steps=steps, cond=Condition(class_labels=labels),
               generator=torch.Generator().manual_seed(seed), **grid)
    return x.view(len(labels), *suite.shape)


def guided_samples(model, suite: TwoPromptSuite, condition, scale: float, n: int, steps: int, seed: int,
                   two_pass: bool = False):
    """Samples of ``model`` at guidance ``scale`` and of the exact CFG target, with the same labels, noise and Heun
    grid (the teacher's σ range). ``condition(prompt_index)`` gives the text condition. A GFT model reads the scale
    (one pass per step); a plain model is sampled conditionally, or with two-pass CFG if ``two_pass``."""
    from ..guidance import ClassifierFreeGuidedDenoiser

    labels = suite.dist.sample_labels(n, torch.Generator().manual_seed(seed))
    cond = condition(labels)
    if model.config.scalar_names:
        cond = with_guidance_scale(cond, scale, n, "cpu")
    den = ClassifierFreeGuidedDenoiser(model, scale) if two_pass else model
    grid = sampling_sigmas(model)
    x = sample(den, (n, *suite.shape), num_steps=steps, cond=cond, generator=torch.Generator().manual_seed(seed),
               **grid)
    return x, exact_guided_samples(suite, labels, scale, steps, seed, **grid)


def export_text_pipeline(teacher_folder, denoiser, out: Path):
    """The teacher folder's own pipeline class with the trained UNet in place of its UNet, as safetensors. A GFT
    UNet has ``time_cond_proj_dim`` (and its trained ``cond_proj``), so the stock pipeline samples it one pass per
    step at the ``guidance_scale`` it is given."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(teacher_folder)
    pipe.unet = denoiser.unet
    pipe.register_to_config(unet=("diffusers", "UNet2DConditionModel"))
    pipe.save_pretrained(out, safe_serialization=True)


def train_text_teacher(cfg: TextTrainConfig) -> dict:
    return TextTeacherTrainer(cfg).fit()


def main(argv: list[str] | None = None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    args = parser.parse_args(argv)
    return train_text_teacher(load_config(TextTrainConfig, args.config, args.overrides))


if __name__ == "__main__":
    main()
