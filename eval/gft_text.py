"""Benchmark ``gft_text``: guidance-free training of a text teacher (gendiv/training/text_gft.py) on the exact suite
through the text path (toy:two_prompts: a 3-component Gaussian mixture in a tiny Stable-Diffusion-shaped UNet's
4×2×2 latent space, the prompts "cat" and "dog" standing for its two classes, one component shared by both).

A conditional teacher is trained first (objective edm, prompt dropout to the empty prompt), then fine-tuned with GFT
(one fine-tuning per seed). At each guidance scale s the GFT model samples one UNet pass per step at s; the control is
the GFT model before fine-tuning, i.e. the teacher's conditional (equal to it at every s: the zero-initialised β
path), and for reference the teacher with two-pass CFG at s. Truth: samples of the exact CFG denoiser at s (the
analytic mixture, same labels, noise and Heun grid). Reported: sliced W₂ to those samples, and the mass on the shared
component (exact CFG moves it to the class's own component). Mean ± std over ``--seeds`` fine-tunings of one
teacher (so the spread is the fine-tuning's, not the teacher's).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

PRETRAIN_STEPS, FINETUNE_STEPS, BATCH, SCALES, SAMPLES, HEUN_STEPS = 1000, 300, 128, (2.0, 3.0), 1000, 12
SHARED = (1, 2)  # the shared component's indices in TwoPromptSuite's mixture


def train(teacher: Path, out: Path, objective: str, steps: int, seed: int) -> Path:
    from gendiv.training import load_config
    from gendiv.training.text_gft import TextTrainConfig, train_text_teacher

    if not (out / "pipeline" / "model_index.json").is_file():
        train_text_teacher(load_config(TextTrainConfig, None, [
            f"teacher={teacher}", f"objective={objective}", f"run.output_dir={out}", f"run.steps={steps}",
            f"run.seed={seed}", f"run.batch_size={BATCH}", "run.progress=false", "run.overwrite=true", "run.threads=1",
            "run.sample_every=0", "optim.lr=2e-3", "optim.ema_decay=0.99", "gft.beta_min=0.25",
            "gft.time_cond_proj_dim=32",
            "gft.eval_steps=4"]))
    return out / "pipeline"


def shared_mass(suite, x: torch.Tensor) -> float:
    """Fraction of samples whose most likely component (noise-free) is the shared one."""
    nearest = suite.dist.responsibilities(x.flatten(1), 0.0).argmax(1)
    return float(sum((nearest == k).double().mean() for k in SHARED))


def tiny_sd_folder(folder: Path) -> Path:
    """gendiv.testing's tiny StableDiffusionPipeline with a narrower UNet (16/32 channels, 203k parameters): on the
    16-dimensional latents it learns as well per step as the 32/64 one and steps 1.5× faster."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from gendiv.testing import tiny_text_to_image_pipeline

    if not (folder / "model_index.json").is_file():
        p = tiny_text_to_image_pipeline(seed=0)
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                    layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    cross_attention_dim=p.text_encoder.config.hidden_size, norm_num_groups=8,
                                    attention_head_dim=8)
        StableDiffusionPipeline(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=unet,
                                scheduler=p.scheduler, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folder)
    return folder


def run(args, bench) -> str:
    from gendiv.condition import Condition
    from gendiv.models import latent_text_teacher_from_folder
    from gendiv.toy import sliced_wasserstein2
    from gendiv.training.text_gft import (TwoPromptSuite, exact_guided_samples, guided_samples, sampling_sigmas,
                                          smallest_latent_shape)

    root = Path(__file__).resolve().parents[1] / "runs" / "bench_gft_text"
    t0 = time.time()
    teacher_folder = train(tiny_sd_folder(root / "sd_random"), root / "teacher", "edm", PRETRAIN_STEPS, 0)
    teacher = latent_text_teacher_from_folder(teacher_folder)
    suite = TwoPromptSuite(smallest_latent_shape(teacher.denoiser.unet))
    grid = sampling_sigmas(teacher.denoiser)
    rows: dict = {}

    def record(s, label, passes, x, target):
        row = rows.setdefault((s, label), {"passes": passes, "w2": [], "mass": []})
        row["w2"].append(sliced_wasserstein2(x.flatten(1), target.flatten(1)))
        row["mass"].append(shared_mass(suite, x))

    for seed in range(args.seeds):
        gft = latent_text_teacher_from_folder(train(teacher_folder, root / f"gft_seed{seed}", "gft", FINETUNE_STEPS,
                                                    seed + 1))
        variants = {"GFT at s": (gft, 1, False), "control: before GFT (the teacher)": (teacher, 1, False),
                    "teacher, CFG at s": (teacher, 2, True)}
        noise_seed = 100 + seed
        for s in SCALES:
            for label, (model, passes, two_pass) in variants.items():
                embeds = model.encode(suite.prompts)
                with torch.no_grad():
                    x, target = guided_samples(model.denoiser.eval(), suite,
                                               lambda idx: Condition(text_embeds=embeds[idx]), s, SAMPLES,
                                               HEUN_STEPS, noise_seed, two_pass=two_pass)
                record(s, label, passes, x, target)
            labels = suite.dist.sample_labels(SAMPLES, torch.Generator().manual_seed(noise_seed))
            record(s, "exact conditional (no guidance)", "–",
                   exact_guided_samples(suite, labels, 1.0, HEUN_STEPS, noise_seed, **grid), target)
            record(s, "exact CFG at s, other noise (floor)", "–",
                   exact_guided_samples(suite, labels, s, HEUN_STEPS, noise_seed + 50, **grid), target)
    body = [[f"{s:g}", label, r["passes"], bench._mean_spread(r["w2"]), bench._mean_spread(r["mass"])]
            for (s, label), r in sorted(rows.items(), key=lambda kv: kv[0][0])]
    return (f"toy:two_prompts (latents 4×2×2, prompts \"cat\"/\"dog\"), a tiny SD-shaped UNet2DConditionModel (16/32 "
            f"channels) with gendiv.testing's CLIP text encoder; teacher: {PRETRAIN_STEPS} steps of objective edm; "
            f"GFT: {FINETUNE_STEPS} more steps per seed (β_min 0.25); batch {BATCH}, σ of uniform DDPM timesteps; "
            f"{SAMPLES} samples, Heun {HEUN_STEPS} steps over the teacher's σ range; mean ± std over {args.seeds} "
            f"GFT seeds; wall {time.time() - t0:.0f} s; {bench.machine()}\n\n"
            + bench.table(["s", "sampler", "UNet passes/step", "sliced W₂ to exact CFG samples",
                           "mass on the shared component"], body))
