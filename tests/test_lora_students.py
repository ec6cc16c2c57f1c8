"""LoRA students through the distillation trainer: `gendiv distill student.lora.rank=...` on a Stable Diffusion-shaped
teacher folder trains student and fake score as adapters on one frozen base, and writes diffusers' LoRA format, which
stock `load_lora_weights` puts on the teacher pipeline: its one trailing Euler step gives the student's images."""
import json

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

from gendiv import testing
from gendiv.cli import main
from gendiv.training import ConfigError, DistillConfig, load_config
from gendiv.training.distill import DistillTrainer

PROMPTS = ["a cat", "a dog", "a red house"]


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_sd") / "pipe"
    testing.tiny_text_to_image_pipeline().save_pretrained(path)
    return path


def _one_step_sigma(folder) -> float:
    scheduler = EulerDiscreteScheduler.from_config(EulerDiscreteScheduler.load_config(folder / "scheduler"),
                                                   timestep_spacing="trailing")
    scheduler.set_timesteps(1)
    return float(scheduler.sigmas[0])


def test_two_commands_from_a_teacher_folder_to_a_one_step_lora(sd_folder, tmp_path):
    sigma = _one_step_sigma(sd_folder)
    out = tmp_path / "run"
    main(["distill", f"teacher.source={sd_folder}", f"teacher.prompts={json.dumps(PROMPTS)}", "method.name=dmd",
          "method.fake_warmup_steps=0", "student.lora.rank=4", f"student.sigma_init={sigma}", "run.steps=2",
          "run.batch_size=2", "optim.lr_generator=0.05", "optim.lr_fake=0.05", "optim.ema_decay=0",
          "run.mixed_precision=no", f"run.output_dir={out}", "run.progress=false"])
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file() and not (out / "pipeline").exists()
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    before = pipe(prompt=PROMPTS[:2], num_inference_steps=1, guidance_scale=1.0, latents=z, output_type="latent").images
    pipe.load_lora_weights(out / "lora")
    after = pipe(prompt=PROMPTS[:2], num_inference_steps=1, guidance_scale=1.0, latents=z, output_type="latent").images
    assert torch.isfinite(after).all() and (after - before).abs().max() > 1e-4  # the adapters were trained


def test_one_base_in_memory_and_the_teacher_untouched(sd_folder, tmp_path):
    cfg = load_config(DistillConfig, None, [f"teacher.source={sd_folder}", f"teacher.prompts={json.dumps(PROMPTS)}",
                                            "method.name=dmd", "method.fake_warmup_steps=0", "student.lora.rank=4",
                                            "run.steps=1", "run.batch_size=2", f"run.output_dir={tmp_path}",
                                            "run.progress=false", "run.mixed_precision=no"])
    trainer = DistillTrainer(cfg)
    base = trainer.lora.net
    trained = {name: sum(p.numel() for p in params) for name, params in trainer.trainable.items()}
    assert trained["generator"] == trained["fake"] > 0  # two adapters of the same size
    assert trained["generator"] < 0.2 * sum(p.numel() for p in base.parameters())
    x = torch.randn(2, 4, 8, 8)
    cond = trainer._cond(2)
    want = trainer.teacher(x, torch.full((2,), 3.0), cond)
    trainer.fit()
    torch.testing.assert_close(trainer.teacher(x, torch.full((2,), 3.0), cond), want)  # the base never trains


def test_lora_needs_a_pipeline_with_a_lora_loader(tmp_path):
    with pytest.raises(ConfigError, match="student.lora adapts a network teacher"):
        DistillTrainer(load_config(DistillConfig, None, ["student.lora.rank=4", f"run.output_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"student\.lora\.rank must be ≥ 0"):
        load_config(DistillConfig, None, ["student.lora.rank=-1"])
