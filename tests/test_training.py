import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gendiv.training import CheckpointError, ConfigError, NonFiniteError, TrainConfig, load_config, train
from gendiv.training.data import build_source
from gendiv.training.diffusion import DiffusionTrainer, sample_with
from gendiv.toy import mean_log_likelihood

from .conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, *overrides):
    return load_config(TrainConfig, None, [f"run.output_dir={tmp_path}", "run.progress=false", *overrides])


def _losses(path):
    return [r["loss"] for r in map(json.loads, Path(path, "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'stpes' in run"):
        load_config(TrainConfig, None, ["run.stpes=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate' in optim"):
        load_config(TrainConfig, bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainConfig, None, ["run.steps"])
    for f in (REPO / "configs").glob("teacher_*.yaml"):
        load_config(TrainConfig, f)


def test_teacher_beats_initialisation_on_exact_log_likelihood(tmp_path):
    cfg = _cfg(tmp_path, "run.steps=400", "run.checkpoint_every=400", "optim.ema_decay=0.95", "eval.num_samples=1000")
    trainer = DiffusionTrainer(cfg)
    dist = trainer.source.dist
    x0, _ = sample_with(trainer.ema_model, trainer.source, 1000, cfg.eval, seed=5, device="cpu")
    before = mean_log_likelihood(dist, x0)
    trainer.fit()
    x1, _ = sample_with(trainer.ema_model, trainer.source, 1000, cfg.eval, seed=5, device="cpu")
    after = mean_log_likelihood(dist, x1)
    assert after > before + 5, (before, after)
    assert (tmp_path / "samples_final.png").is_file() and (tmp_path / "metrics.csv").is_file()
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    common = ["run.steps=30", "run.checkpoint_every=10", "run.log_every=1", "eval.num_samples=64", "eval.num_steps=2"]
    train(_cfg(tmp_path / "a", *common))
    stopped = train(_cfg(tmp_path / "b", *common, "run.stop_after=20"))
    assert stopped == {"stopped_at": 20}
    # a partially written checkpoint (killed mid-save) is ignored
    (tmp_path / "b" / "checkpoints" / ".tmp-step-00000025").mkdir()
    train(_cfg(tmp_path / "b", *common, "run.resume=true"))
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == len(b) == 30
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_truncated_checkpoint_falls_back_to_the_intact_older_one(tmp_path, capsys):
    train(_cfg(tmp_path, "run.steps=4", "run.checkpoint_every=2", "eval.num_samples=32", "eval.num_steps=2"))
    ckpts = tmp_path / "checkpoints"
    latest = ckpts / (ckpts / "latest").read_text()
    assert latest.name == "step-00000004" and (ckpts / "step-00000002").is_dir()
    model_file = latest / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    train(_cfg(tmp_path, "run.steps=6", "run.checkpoint_every=2", "run.resume=true", "eval.num_samples=32", "eval.num_steps=2"))
    out = capsys.readouterr().out
    assert "model.safetensors is truncated" in out and "resuming from step-00000002" in out
    assert any(p.name.startswith("step-00000004.damaged") for p in ckpts.iterdir())  # kept, not deleted
    # with every checkpoint damaged, resuming is refused with the reason
    for folder in ckpts.glob("step-*"):
        for f in folder.glob("model.safetensors"):
            f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="no intact checkpoint.*truncated"):
        train(_cfg(tmp_path, "run.steps=8", "run.resume=true"))


def test_nan_loss_stops_with_step_and_name(tmp_path, monkeypatch):
    """Bad data is refused when it is loaded (test_bad_input); a loss that turns NaN later names the step."""
    from gendiv.training import DiffusionTrainer
    from gendiv.training import diffusion as diffusion_module

    trainer = DiffusionTrainer(_cfg(tmp_path / "run", "run.batch_size=8", "run.steps=3"))
    real_loss = diffusion_module.denoising_loss
    monkeypatch.setattr(diffusion_module, "denoising_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    with pytest.raises(NonFiniteError, match="step 1: denoising loss is not finite"):
        trainer.fit()


def test_data_sources(tmp_path):
    from PIL import Image

    with pytest.raises(ValueError, match="contains no images"):
        build_source(f"folder:{tmp_path}")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((6, 6, 3), 255, np.uint8)).save(tmp_path / "b.jpg")
    src = build_source(f"folder:{tmp_path}", image_size=8)
    assert src.shape == (3, 8, 8) and src.images.min() >= -1 and src.images.max() <= 1
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        build_source(f"folder:{tmp_path}")
    digits = build_source("digits", image_size=16)
    assert digits.shape == (1, 16, 16) and digits.num_classes == 10 and len(digits.images) == 1797
    mnist = build_source("mnist")
    assert mnist.shape == (1, 28, 28) and len(mnist.images) == 5000
    with pytest.raises(ValueError, match="unknown data source"):
        build_source("cifar10")


def test_image_teacher_trains_and_exports(tmp_path):
    cfg = _cfg(tmp_path, "data.source=digits", "data.image_size=8", "run.batch_size=16", "run.steps=3",
               "model.block_out_channels=[8,16]", "run.mixed_precision=bf16")
    train(cfg)
    assert (tmp_path / "samples_final.png").is_file()
    from gendiv import GenDivPipeline

    pipe = GenDivPipeline.from_pretrained(str(tmp_path / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    assert len(pipe(batch_size=2, class_labels=[1, 2], num_inference_steps=2).images) == 2


@pytest.mark.slow
def test_two_process_training_under_accelerate(tmp_path):
    """torchrun with 2 ranks gives accelerate's MULTI_CPU (gloo); both ranks train, rank 0 logs and checkpoints."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "pipelines" / "train.py"), f"run.output_dir={tmp_path}", "run.steps=20", "run.checkpoint_every=10",
           "run.batch_size=32", "run.progress=false", "eval.num_samples=64", "eval.num_steps=2", "run.log_every=5"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads((tmp_path / "checkpoints" / "step-00000020" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert (tmp_path / "checkpoints" / "step-00000020" / "data_rng_1.safetensors").is_file()
    assert len(_losses(tmp_path)) == 4
