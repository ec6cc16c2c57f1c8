"""Guidance-free training of text teachers (gendiv/training/text_gft.py, docs/guidance_free.md "Text teachers"): the
empty prompt is the unconditional branch, β enters through the UNet's time embedding (zero-initialised), and the
exported folder samples at guidance scale s with the stock StableDiffusionPipeline, one UNet pass per step."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline

from gendiv.condition import GUIDANCE_SCALAR, Condition, with_guidance_scale
from gendiv.models import encode_prompts, latent_text_teacher_from_folder
from gendiv.models.latent_text import text_denoiser
from gendiv.objectives.guidance_free import gft_loss
from gendiv.space import append_dims, edm_loss_weight, sample_sigma
from gendiv.testing import tiny_text_to_image_pipeline
from gendiv.training import ConfigError, load_config
from gendiv.training.text_gft import TextTeacherTrainer, TextTrainConfig, gft_text_denoiser

PROMPTS = ["cat", "dog"]


def perturbed_pipeline():
    pipe = tiny_text_to_image_pipeline()
    g = torch.Generator().manual_seed(3)
    for p in pipe.unet.parameters():  # away from diffusers' zero-initialised outputs, so the prompt matters
        p.data += 0.05 * torch.randn(p.shape, generator=g)
    return pipe


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_sd") / "pipe"
    perturbed_pipeline().save_pretrained(path)
    return path


def teacher_and_gft(dim=32):
    pipe = perturbed_pipeline()
    den = text_denoiser(pipe.unet, pipe.scheduler, pipe.tokenizer, pipe.text_encoder)
    return pipe, den, gft_text_denoiser(den, dim)


def noised(den, pipe, n=4, sigma=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 4, 8, 8, generator=g)
    x = x0 + sigma * torch.randn(x0.shape, generator=g)
    embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [PROMPTS[i % 2] for i in range(n)])
    return x0, x, torch.full((n,), sigma), Condition(text_embeds=embeds)


def test_zero_initialised_gft_text_model_equals_its_teacher_at_every_scale():
    """Before training the β path adds cond_proj(emb(s − 1)) = 0 to the timestep embedding: the GFT model is the
    teacher for every scale, with a prompt and with the empty prompt."""
    pipe, den, gft = teacher_and_gft()
    assert gft.config.scalar_names == [GUIDANCE_SCALAR] and gft.unet.config.time_cond_proj_dim == 32
    assert not gft.unet.time_embedding.cond_proj.weight.any()
    torch.testing.assert_close(gft.null_text_embeds, den.null_text_embeds, rtol=0, atol=0)
    _, x, sig, cond = noised(den, pipe)
    with torch.no_grad():
        for c in (cond, cond.with_null()):
            base = den(x, sig, c)
            for s in (1.0, 1.5, 3.0, 7.5):
                torch.testing.assert_close(gft(x, sig, with_guidance_scale(c, s, 4, "cpu")), base, atol=1e-6, rtol=1e-6)
        assert (den(x, sig, cond) - den(x, sig, cond.with_null())).abs().max() > 1e-3  # the prompt matters


def test_gft_text_loss_equals_its_closed_form():
    """gft_loss on prompts: batch mean of λ(σ)·mean(β·D_s(x|c, 1/β) + (1 − β)·D_s(x|"", 1) − x₀)², with
    λ = 1/σ² + 1/σ_d², evaluated here by separate network calls; the dropped sample uses the empty prompt in both
    branches (its β still weights them, so its target is the unconditional model)."""
    pipe, _, gft = teacher_and_gft()
    with torch.no_grad():
        gft.unet.time_embedding.cond_proj.weight.normal_(0, 0.3)  # the β path now changes the output
    x0, _, _, cond = noised(gft, pipe, n=3)
    cond = Condition(text_embeds=cond.text_embeds, drop=torch.tensor([False, True, False]))
    loss = gft_loss(gft.eval(), x0, cond, beta_min=0.3, generator=torch.Generator().manual_seed(5))
    # the same draws, in gft_loss's order: β ~ U(0.3, 1], then σ, then the noise
    g = torch.Generator().manual_seed(5)
    beta = 1 - 0.7 * torch.rand(3, generator=g)
    sigma = sample_sigma("lognormal", 3, generator=g)
    x = x0 + append_dims(sigma, 4) * torch.randn(x0.shape, generator=g)
    terms = []
    with torch.no_grad():
        for i in range(3):
            c = cond.index([i])
            s = 1.0 if bool(cond.drop[i]) else float(1 / beta[i])
            d_s = gft(x[i:i + 1], sigma[i:i + 1], with_guidance_scale(c, s, 1, "cpu"))
            d_u = gft(x[i:i + 1], sigma[i:i + 1], with_guidance_scale(c.with_null(), 1.0, 1, "cpu"))
            d_c = beta[i] * d_s + (1 - beta[i]) * d_u
            terms.append(edm_loss_weight(sigma[i:i + 1], 0.5) * (d_c - x0[i:i + 1]).pow(2).mean())
    torch.testing.assert_close(loss.detach(), torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)


def _cfg(folder, out, *extra):
    return load_config(TextTrainConfig, None, [f"teacher={folder}", f"run.output_dir={out}", "run.batch_size=8",
                                               "run.progress=false", "run.steps=3", "run.threads=1",
                                               "gft.time_cond_proj_dim=32",
                                               "gft.eval_steps=2", "optim.lr=1e-3", *extra])


def test_gradient_reaches_the_beta_embedding_and_unet_not_the_text_encoder(sd_folder, tmp_path):
    trainer = TextTeacherTrainer(_cfg(sd_folder, tmp_path / "run"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    x0, idx = trainer.source.sample_batch(8, trainer.gen)
    loss = trainer.loss(trainer.model, x0, trainer.condition(idx, torch.zeros(8, dtype=torch.bool)), trainer.gen)
    loss.backward()
    unet = model.unet
    assert unet.time_embedding.cond_proj.weight.grad.abs().sum() > 0  # β's own embedding
    assert unet.conv_in.weight.grad.abs().sum() > 0 and unet.time_embedding.linear_1.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.text_encoder.parameters())
    assert all(p.grad is None for p in trainer.teacher.vae.parameters())
    names = {id(p) for group in trainer.opt.param_groups for p in group["params"]}
    assert names == {id(p) for p in model.parameters()}  # the optimiser holds the denoiser's weights only
    trainer.release_output_dir()


@pytest.fixture(scope="module")
def gft_run(sd_folder, tmp_path_factory):
    """Three GFT steps on the exact two-prompt suite; the run folder and the final evaluation."""
    out = tmp_path_factory.mktemp("gft") / "run"
    return out, TextTeacherTrainer(_cfg(sd_folder, out)).fit()


def test_training_runs_and_the_stock_pipeline_samples_it_one_pass_per_step(gft_run):
    """A few GFT steps end to end; the exported folder is the teacher's StableDiffusionPipeline with a UNet whose
    cond_proj is trained and saved in its safetensors. In a fresh process the stock pipeline at guidance_scale s
    calls the UNet once per step and equals gendiv's own DDIM loop over the GFT denoiser at s."""
    out, summary = gft_run
    assert summary["sliced_w2_to_cfg_3"] > 0
    folder = out / "pipeline"
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    code = f"""
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file
from gendiv.condition import with_guidance_scale
from gendiv.models import latent_text_teacher_from_folder
folder = {str(folder)!r}
print("cond_proj", float(load_file(folder + "/unet/diffusion_pytorch_model.safetensors")
                         ["time_embedding.cond_proj.weight"].abs().max()))
pipe = StableDiffusionPipeline.from_pretrained(folder)
pipe.set_progress_bar_config(disable=True)
calls = []
pipe.unet.register_forward_hook(lambda *a: calls.append(1))
latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
s, steps = 3.0, 4
stock = pipe(["cat", "dog"], guidance_scale=s, num_inference_steps=steps, latents=latents.clone(),
             output_type="latent").images
print("calls", len(calls), steps)
teacher = latent_text_teacher_from_folder(folder)
den, sched = teacher.denoiser, DDIMScheduler.from_config(pipe.scheduler.config)
sched.set_timesteps(steps)
cond = with_guidance_scale(teacher.condition(["cat", "dog"]), s, 2, "cpu")
x = latents * sched.init_noise_sigma
with torch.no_grad():
    for t in sched.timesteps:
        ac = sched.alphas_cumprod[int(t)]
        a, sig = ac.sqrt(), (1 - ac).sqrt()
        x0 = den(x / a, (sig / a).expand(2), cond)
        x = sched.step((x - a * x0) / sig, t, x).prev_sample
print("gap", float((x - stock).abs().max()), float(stock.abs().max()))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
    assert float(lines["cond_proj"]) > 0  # the β embedding was trained and saved with the UNet
    calls, steps = map(int, lines["calls"].split())
    assert calls == steps  # one UNet pass per step: no CFG batch
    gap, size = map(float, lines["gap"].split())
    assert gap < 1e-4 * max(size, 1.0), lines["gap"]


def test_objective_edm_trains_a_plain_conditional_model(sd_folder, tmp_path):
    out = tmp_path / "plain"
    TextTeacherTrainer(_cfg(sd_folder, out, "objective=edm", "run.steps=2")).fit()
    den = latent_text_teacher_from_folder(out / "pipeline").denoiser
    assert den.config.scalar_names is None and den.unet.config.time_cond_proj_dim is None
    # and a GFT run starts from it: GFT's zero-initialised path is added to the saved plain model
    gft = TextTeacherTrainer(_cfg(out / "pipeline", tmp_path / "gft", "run.steps=1"))
    assert gft.accelerator.unwrap_model(gft.model).config.scalar_names == [GUIDANCE_SCALAR]
    gft.release_output_dir()


@pytest.mark.parametrize("override, message", [
    (["objective=cfg"], r"objective must be one of \['gft', 'edm'\], got 'cfg'"),
    (["gft.beta_min=0"], r"gft.beta_min must be in \(0, 1\)"),
    (["gft.time_cond_proj_dim=7"], r"gft.time_cond_proj_dim must be an even number ≥ 4, got 7"),
    (["data.source=toy:ring"], r"data.source must be toy:two_prompts or folder:<path>, got 'toy:ring'"),
    (["gft.lr=1"], r"unknown config key 'lr' in gft"),
    (["optim.cond_drop_prob=2"], r"optim.cond_drop_prob must be in \[0, 1\], got 2"),
])
def test_bad_config_is_one_line(sd_folder, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        _cfg(sd_folder, tmp_path, *override)
    assert "\n" not in str(err.value)


def test_bad_teacher_and_data_are_one_line(sd_folder, gft_run, tmp_path):
    with pytest.raises(ConfigError, match=r"teacher=.*nope is not a text-conditioned pipeline folder"):
        _cfg(tmp_path / "nope", tmp_path / "a")
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ValueError, match=r"folder:.*imgs has no metadata.jsonl"):
        TextTeacherTrainer(_cfg(sd_folder, tmp_path / "b", f"data.source=folder:{tmp_path / 'imgs'}"))
    with pytest.raises(ConfigError, match=r"objective edm trains a plain conditional model, but teacher=.* takes"):
        TextTeacherTrainer(_cfg(gft_run[0] / "pipeline", tmp_path / "c", "objective=edm"))
    with pytest.raises(ConfigError, match=r"teacher must name a StableDiffusionPipeline-shaped folder"):
        TextTeacherTrainer(load_config(TextTrainConfig, None, [f"run.output_dir={tmp_path / 'd'}"]))


def test_captioned_folder_trains(sd_folder, tmp_path):
    """folder:<path> with metadata.jsonl: images encoded once by the teacher's VAE to the UNet's latents."""
    import json

    import numpy as np
    from PIL import Image

    data = tmp_path / "captions"
    data.mkdir()
    rows = []
    for i in range(4):
        Image.fromarray((np.random.default_rng(i).random((16, 16, 3)) * 255).astype(np.uint8)).save(data / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": PROMPTS[i % 2]})
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    trainer = TextTeacherTrainer(_cfg(sd_folder, tmp_path / "run", f"data.source=folder:{data}", "run.steps=2"))
    assert trainer.source.shape == (4, 8, 8) and trainer.source.prompts == PROMPTS
    trainer.fit()
    assert (tmp_path / "run" / "pipeline" / "model_index.json").is_file()
    assert isinstance(StableDiffusionPipeline.from_pretrained(tmp_path / "run" / "pipeline"), StableDiffusionPipeline)
