"""Latent, text-conditioned teachers (issue 12, part 2): a StableDiffusionPipeline-shaped folder (tiny random
components built from configs) is a teacher in latent space with prompt embeddings as the condition and the ""
prompt as the guidance null; the wrapped x̂₀ and its CFG equal diffusers' own computation; it distils for a few steps
and the one-step student pipeline returns images for a prompt after save/load in a fresh process."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import DDIMScheduler

from gendiv import ClassifierFreeGuidance, Condition, OneStepTextToImagePipeline, load_pipeline
from gendiv.cli import main
from gendiv.models import encode_prompts, latent_text_teacher_from_folder
from gendiv.models.latent_text import text_denoiser
from gendiv.testing import tiny_text_to_image_pipeline
from gendiv.training import ConfigError, load_config
from gendiv.training.distill import DistillConfig, distill

PROMPTS = ["a red circle", "two blue squares", "digit 7"]


def perturbed_pipeline(prediction_type="epsilon"):
    pipe = tiny_text_to_image_pipeline(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(3)
    for p in pipe.unet.parameters():  # away from the near-zero init, so the UNet's output (and the text) matters
        p.data += 0.05 * torch.randn(p.shape, generator=g)
    return pipe


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_sd") / "pipe"
    perturbed_pipeline().save_pretrained(path)
    return path


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_text_teacher_x0_and_cfg_equal_diffusers(pred):
    """x̂₀ of the wrapped UNet at a DDIM timestep equals the scheduler's pred_original_sample with the prompt's
    embedding; the null condition is StableDiffusionPipeline's negative ("") embedding; CFG in x̂₀ space equals
    diffusers' ε/v-space CFG (linear, weights summing to 1)."""
    pipe = perturbed_pipeline(pred)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(10)
    den = text_denoiser(pipe.unet, sched, pipe.tokenizer, pipe.text_encoder)
    assert (den.config.parameterization, den.config.prediction_type) == ("vp", pred)
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(PROMPTS[:2], "cpu", 1, True, negative_prompt=None)
    ours = encode_prompts(pipe.tokenizer, pipe.text_encoder, PROMPTS[:2])
    torch.testing.assert_close(ours, pos)
    torch.testing.assert_close(den.null_text_embeds.expand_as(neg), neg)

    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = sched.timesteps[4]
    ac = sched.alphas_cumprod[int(t)]
    alpha, sigma = ac.sqrt(), (1 - ac).sqrt()
    x_t = alpha * x0 + sigma * eps
    scale = 3.0
    with torch.no_grad():
        out_c = pipe.unet(x_t, t, encoder_hidden_states=pos).sample
        out_u = pipe.unet(x_t, t, encoder_hidden_states=neg).sample
        ref_c = sched.step(out_c, t, x_t).pred_original_sample
        ref_cfg = sched.step(out_u + scale * (out_c - out_u), t, x_t).pred_original_sample
        cond = Condition(text_embeds=ours)
        x, s = x_t / alpha, (sigma / alpha).expand(2)
        torch.testing.assert_close(den(x, s, cond), ref_c, atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(ClassifierFreeGuidance(den, scale)(x, s, cond), ref_cfg, atol=2e-4, rtol=1e-4)
        # the prompt matters, and a dropped sample is the null prompt
        assert (den(x, s, cond) - den(x, s, cond.with_null())).abs().max() > 1e-3
        ref_u = sched.step(out_u, t, x_t).pred_original_sample
        torch.testing.assert_close(den(x, s, cond.with_null()), ref_u, atol=5e-5, rtol=1e-4)


def test_condition_carries_prompt_embeddings():
    e = torch.randn(3, 16, 32)
    c = Condition(text_embeds=e)
    both = Condition.cat([c, c.with_null()])
    assert both.text_embeds.shape == (6, 16, 32) and both.drop.tolist() == [False] * 3 + [True] * 3
    assert torch.equal(c.index(torch.tensor([2, 0])).text_embeds, e[[2, 0]])
    assert c.batch_size() == 3


def test_text_denoiser_refuses_bad_conditions(sd_folder):
    den = latent_text_teacher_from_folder(sd_folder).denoiser
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"text_embeds must have shape \[2, 16, 32\]"):
        den(x, 1.0, Condition(text_embeds=torch.randn(2, 7, 32)))
    with pytest.raises(ValueError, match="needs a UNet2DConditionModel"):
        type(den)(unet_class="UNet2DModel", unet_config={"sample_size": 8, "block_out_channels": [32, 64],
                                                         "down_block_types": ["DownBlock2D"] * 2,
                                                         "up_block_types": ["UpBlock2D"] * 2, "norm_num_groups": 8},
                  text_embeds_shape=[16, 32])
    with pytest.raises(ValueError, match="classifier-free guidance with guidance_scale=2.0 needs prompt embeddings"):
        ClassifierFreeGuidance(den, 2.0)(x, 1.0, None)


def _cfg(folder, out, *extra):
    return load_config(DistillConfig, None, [f"teacher.source={folder}", f"teacher.prompts={json.dumps(PROMPTS)}",
                                             "method.name=dmd", "run.steps=3", "run.batch_size=2", f"run.output_dir={out}",
                                             "method.fake_warmup_steps=1", "run.progress=false", *extra])


def test_text_teacher_distils_and_student_pipeline_loads_in_fresh_process(sd_folder, tmp_path):
    out = tmp_path / "run"
    distill(_cfg(sd_folder, out, "teacher.guidance_scale=2.0"))
    assert (out / "samples_final.png").is_file()
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == ["gendiv_pipeline", "OneStepTextToImagePipeline"] and index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    code = f"""
import torch, gendiv
pipe = gendiv.load_pipeline({str(out / 'pipeline')!r})
a = pipe(prompt=["a red circle", "digit 7"], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0),
         output_type="np").images
b = pipe(prompt=["a red circle", "digit 7"], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0),
         output_type="latent").images
print(a.shape, tuple(b.shape), float(abs(b[0] - b[2]).max()), type(pipe(prompt="a").images[0]).__name__)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    shapes = res.stdout.strip().splitlines()[-1]
    assert shapes.startswith("(4, 16, 16, 3) (4, 4, 8, 8)") and shapes.endswith("Image"), shapes
    assert float(shapes.split()[-2]) > 0  # different prompts, different latents


def test_student_pipeline_equals_generator_then_vae(sd_folder, tmp_path):
    """The pipeline is exactly: encode prompt → G(z | embedding) → VAE decode of latents / scaling_factor."""
    out = tmp_path / "run"
    distill(_cfg(sd_folder, out, "run.steps=1", "method.fake_warmup_steps=0"))
    pipe = load_pipeline(out / "pipeline")
    assert isinstance(pipe, OneStepTextToImagePipeline)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    got = pipe(prompt="digit 7", latents=z, output_type="pt").images
    with torch.no_grad():
        emb = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["digit 7"])
        lat = pipe.student.backbone(z * pipe.student.config.sigma_init, pipe.student.config.sigma_init,
                                    Condition(text_embeds=emb))
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    torch.testing.assert_close(got, (img / 2 + 0.5).clamp(0, 1))
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_embeds"):
        pipe()


def test_text_teacher_bad_input(sd_folder, tmp_path):
    # no prompts: refused when the config loads
    with pytest.raises(ConfigError, match="text-conditioned pipeline; set teacher.prompts"):
        load_config(DistillConfig, None, [f"teacher.source={sd_folder}", "method.name=dmd"])
    # a method with a real-data (GAN) term
    with pytest.raises(ConfigError, match="distils data-free"):
        distill(_cfg(sd_folder, tmp_path / "gan", "method.name=dmd2"))
    # no tokenizer: the folder and the component are named
    broken = tmp_path / "no_tokenizer"
    shutil.copytree(sd_folder, broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["tokenizer"] = [None, None]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"{broken}: the text-conditioned pipeline StableDiffusionPipeline has no tokenizer"):
        latent_text_teacher_from_folder(broken)
    # two text encoders (SDXL-shaped)
    index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="two text encoders"):
        latent_text_teacher_from_folder(broken)


def test_text_teacher_cli_errors_are_one_line(sd_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["distill", f"teacher.source={sd_folder}", "method.name=dmd", f"run.output_dir={tmp_path / 'r'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set teacher.prompts" in err[0]


def test_sd15_gpu_config_runs_on_a_tiny_stand_in(sd_folder, tmp_path):
    """configs/distill_dmd_sd15_gpu.yaml, pointed at the tiny SD-shaped folder, runs as written for a couple of steps."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "distill_dmd_sd15_gpu.yaml"
    cfg = load_config(DistillConfig, config, [f"teacher.source={sd_folder}", "run.steps=2", "run.batch_size=2",
                                              "run.mixed_precision=no", f"run.output_dir={tmp_path / 'r'}",
                                              "run.progress=false", "method.fake_updates_per_generator_update=1"])
    distill(cfg)
    assert (tmp_path / "r" / "pipeline" / "student").is_dir()
