"""memory.fsdp: the distillation trainer with FSDP2 on 2 CPU processes (gloo) computes what the same run under DDP
computes (same processes, same draws, same global batch), to round-off: the losses of every step, the exported
student, and a killed-and-resumed sharded run continues as if uninterrupted. Generator, fake score and discriminator
are sharded (full weights, with gradient checkpointing), and LoRA adapters on one sharded base."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import free_port

PROMPTS = ["a cat", "a dog", "a red house"]
COMMON = ["run.progress=false", "run.log_every=1", "run.steps=4", "run.checkpoint_every=2", "run.batch_size=2",
          "run.mixed_precision=no", "method.fake_warmup_steps=1", "method.fake_updates_per_generator_update=1",
          "eval.num_samples=4", "optim.ema_decay=0.5"]
FULL = ["method.name=dmd2", "data.source=digits", "data.image_size=8", "student.discriminator_hidden=8",
        "memory.gradient_checkpointing=true", "optim.lr_generator=1e-3", "optim.lr_fake=1e-3"]
LORA = ["method.name=dmd", "student.lora.rank=4", "optim.lr_generator=1e-2", "optim.lr_fake=1e-2", "run.steps=3",
        f"teacher.prompts={json.dumps(PROMPTS)}"]


def _run(out, *overrides):
    from gendiv.training import DistillConfig, load_config
    from gendiv.training.distill import DistillTrainer

    trainer = DistillTrainer(load_config(DistillConfig, None, [f"run.output_dir={out}", *COMMON, *overrides]))
    trainer.fit()
    return trainer


def _held_fraction(trainer) -> dict:
    """The part of each network's weights this process holds."""
    from gendiv.models.sharding import is_sharded

    nets = {**trainer.nets, "teacher": trainer.teacher, "ema": trainer.ema_generator}
    return {name: sum((p.to_local() if is_sharded(p) else p).numel() for p in net.parameters())
            / sum(p.numel() for p in net.parameters()) for name, net in nets.items()}


def _worker(rank: int, world: int, port: int, root: str, teachers: dict, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from gendiv.models.sharding import full_state_dict

    full = [f"teacher.source={teachers['pixel']}", *FULL]
    _run(f"{root}/ddp", *full)
    _run(f"{root}/fsdp", *full, "memory.fsdp=true", "run.stop_after=2")  # killed after its step-2 checkpoint
    sharded = _run(f"{root}/fsdp", *full, "memory.fsdp=true", "run.resume=true")
    gathered = full_state_dict(sharded.ema_generator)
    lora = [f"teacher.source={teachers['text']}", *LORA]
    _run(f"{root}/lora_ddp", *lora)
    _run(f"{root}/lora_fsdp", *lora, "memory.fsdp=true")
    # the generator wraps its denoiser as .backbone; the fake score is a denoiser itself
    checkpointed = [getattr(net, "backbone", net).unet.is_gradient_checkpointing
                    for net in (sharded.nets["generator"], sharded.nets["fake"])]
    results[rank] = {"held": _held_fraction(sharded), "gathered": gathered, "checkpointed": checkpointed}


def _losses(folder) -> list:
    keys = ("fake_loss", "disc_loss", "distill_loss", "gan_gen_loss", "generator_grad_norm")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [[r.get(k, 0.0) for k in keys] for r in rows if "fake_loss" in r]  # 0: not run at that step


def _assert_same_training(state: dict, reference: dict, lr: float, updates: int):
    """Equal up to round-off as Adam amplifies it: Adam divides each gradient element by its running size, so the
    round-off of a gradient element moves its weight by up to lr per update when that element is itself near zero.
    Most elements (≥ 90 %) agree to a hundredth of one Adam step, and none differs by more than 2·lr per update (an
    Adam step with β₁ = 0 is at most about lr)."""
    assert set(state) == set(reference)
    diff = torch.cat([(state[k] - reference[k]).abs().flatten() for k in reference])
    assert (diff > lr / 100).float().mean() < 0.1, (diff > lr / 100).float().mean()
    assert diff.max() <= 2 * lr * updates


@pytest.mark.slow
def test_sharded_distillation_on_two_cpu_processes_equals_ddp(tmp_path):
    import torch.distributed as dist
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from gendiv import OneStepPipeline, testing

    if not dist.is_gloo_available():
        pytest.skip("this PyTorch build has no gloo backend")
    teachers = {"pixel": tmp_path / "pixel", "text": tmp_path / "text"}
    testing.tiny_gendiv_pipelines(num_classes=10)["GenDivPipeline"].save_pretrained(teachers["pixel"])
    testing.tiny_text_to_image_pipeline().save_pretrained(teachers["text"])
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), {k: str(v) for k, v in teachers.items()}, results),
             nprocs=2)

    for rank in (0, 1):  # every network, the EMA and the teacher: each process holds half
        assert set(results[rank]["held"]) == {"generator", "fake", "discriminator", "teacher", "ema"}
        for name, fraction in results[rank]["held"].items():
            assert 0.4 < fraction < 0.6, (rank, name, fraction)
        assert results[rank]["checkpointed"] == [True, True]
    ddp, fsdp = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")  # the sharded run was resumed at step 2
    assert len(ddp) == len(fsdp) == 4 and 0 not in ddp[-1]  # fake, disc, distill and GAN losses, gradient norm
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(ddp), rtol=1e-4, atol=1e-6)

    exported = {name: OneStepPipeline.from_pretrained(tmp_path / name / "pipeline").student.state_dict()
                for name in ("ddp", "fsdp")}
    gathered = results[0]["gathered"]
    assert set(exported["fsdp"]) == set(gathered)
    for key, value in gathered.items():
        torch.testing.assert_close(exported["fsdp"][key], value, rtol=0, atol=0)  # the whole model, not a shard
    torch.testing.assert_close(results[1]["gathered"], gathered, rtol=0, atol=0)
    _assert_same_training(gathered, exported["ddp"], lr=1e-3, updates=3)

    ddp, fsdp = _losses(tmp_path / "lora_ddp"), _losses(tmp_path / "lora_fsdp")
    assert len(ddp) == len(fsdp) == 3
    # the adapters' gradients are tiny (norm ~1e-2) and their round-off is relatively larger
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(ddp), rtol=1e-3, atol=1e-6)
    lora = {name: load_file(tmp_path / name / "lora" / "pytorch_lora_weights.safetensors")
            for name in ("lora_ddp", "lora_fsdp")}
    assert set(lora["lora_fsdp"]) == set(lora["lora_ddp"])
    _assert_same_training(lora["lora_fsdp"], lora["lora_ddp"], lr=1e-2, updates=2)
    pipe = StableDiffusionPipeline.from_pretrained(teachers["text"])
    pipe.load_lora_weights(tmp_path / "lora_fsdp" / "lora")  # stock diffusers takes the sharded run's adapter


def test_sharding_needs_several_processes_and_contiguous_weights(tmp_path):
    from gendiv.training import ConfigError, DistillConfig, load_config
    from gendiv.training.distill import DistillTrainer

    def trainer(*overrides):
        return DistillTrainer(load_config(DistillConfig, None, [f"run.output_dir={tmp_path}", "run.progress=false",
                                                                "memory.fsdp=true", *overrides]))

    with pytest.raises(ConfigError, match=r"memory.fsdp shards the networks over processes: launch with"):
        trainer()
    with pytest.raises(ConfigError, match=r"memory.fsdp shards contiguous weights only: set run.channels_last=false"):
        trainer("run.channels_last=true")


def test_accelerates_own_fsdp_plugin_is_refused_with_the_key_to_use():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from gendiv.training import ConfigError
    from gendiv.training.fsdp import refuse_accelerate_fsdp

    refuse_accelerate_fsdp(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))
    with pytest.raises(ConfigError, match="launch without it and set memory.fsdp=true"):
        refuse_accelerate_fsdp(SimpleNamespace(distributed_type=DistributedType.FSDP))
