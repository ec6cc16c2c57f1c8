"""The distillation trainer end to end: every method runs and exports, resume is exact, two processes work,
and bad set-ups fail with a message that names the problem."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gendiv.training import (DistillConfig, DistillTrainer, NonFiniteError, TrainConfig, distill, load_config, train)

from .conftest import free_port

REPO = Path(__file__).resolve().parents[1]
FAST = ["run.progress=false", "run.log_every=1", "run.batch_size=64", "method.fake_warmup_steps=2", "eval.num_samples=200",
        "eval.teacher_steps=3", "student.model.hidden=32", "student.model.depth=1", "student.discriminator_hidden=32"]


def _cfg(out, *overrides):
    return load_config(DistillConfig, None, [f"run.output_dir={out}", *FAST, *overrides])


def _rows(out):
    return [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["diff_instruct", "dmd", "dmd2", "f_distill"])
def test_each_method_distils_and_exports(method, tmp_path):
    extra = ["method.regression.weight=0.5", "method.regression.pairs=32"] if method == "dmd" else []
    summary = distill(_cfg(tmp_path, f"method.name={method}", "run.steps=12", "method.fake_updates_per_generator_update=2",
                           *extra))
    assert {"student/sliced_w2", "teacher/sliced_w2", "student/smallest_mode_recall"} <= set(summary)
    rows = _rows(tmp_path)
    assert any("distill_loss" in r for r in rows) and any("fake_loss" in r for r in rows)
    if method in ("dmd2", "f_distill"):
        assert any("disc_loss" in r for r in rows) and any("gan_gen_loss" in r for r in rows)
    if method == "dmd":
        assert any("regression_loss" in r for r in rows)
    assert (tmp_path / "samples_final.png").is_file() and (tmp_path / "eval_final.json").is_file()
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


def test_conditional_one_step_pipeline_loads_in_a_fresh_process(tmp_path):
    distill(_cfg(tmp_path, "teacher.source=analytic:conditional2d", "teacher.guidance_scale=1.5", "run.steps=6"))
    code = (
        "import numpy as np, torch, gendiv\n"
        "from gendiv import OneStepPipeline\n"
        f"pipe = OneStepPipeline.from_pretrained({str(tmp_path / 'pipeline')!r})\n"
        "x = pipe(batch_size=4, class_labels=[0, 1, 2, 3], output_type='np', generator=torch.Generator().manual_seed(0)).images\n"
        "y = pipe(batch_size=4, class_labels=2, renoise_sigmas=[1.0, 0.2], output_type='pt').images\n"
        "assert x.shape == (4, 2) and y.shape == (4, 2) and np.isfinite(x).all()\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ok" in res.stdout, res.stderr[-2000:]


def test_killed_and_resumed_distillation_matches_uninterrupted(tmp_path):
    common = ["method.name=f_distill", "run.steps=16", "run.checkpoint_every=4",
              "method.fake_updates_per_generator_update=2", "method.ratio.bin_ema=0.5"]
    distill(_cfg(tmp_path / "a", *common))
    assert distill(_cfg(tmp_path / "b", *common, "run.stop_after=9")) == {"stopped_at": 9}
    distill(_cfg(tmp_path / "b", *common, "run.resume=true"))
    keys = ("fake_loss", "disc_loss", "distill_loss")
    a = [[r.get(k, 0.0) for k in keys] for r in _rows(tmp_path / "a") if "fake_loss" in r]
    b = [[r.get(k, 0.0) for k in keys] for r in _rows(tmp_path / "b") if "fake_loss" in r]
    assert len(a) == len(b) == 16
    np.testing.assert_allclose(a, b, rtol=1e-5)
    ckpt = tmp_path / "b" / "checkpoints" / "step-00000016"
    assert (ckpt / "state_ratio_bins.safetensors").is_file() and (ckpt / "ema_generator.safetensors").is_file()


def test_nan_in_a_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    trainer = DistillTrainer(_cfg(tmp_path, "method.name=dmd", "run.steps=10", "run.checkpoint_every=3",
                                  "method.fake_updates_per_generator_update=1"))
    original = trainer.method.generator_loss

    def poisoned(*args):
        loss, metrics = original(*args)
        return (loss * float("nan") if trainer.step >= 4 else loss), metrics  # the 5th step fails

    monkeypatch.setattr(trainer.method, "generator_loss", poisoned)
    with pytest.raises(NonFiniteError, match=r"step 5: dmd generator loss is not finite.*step-00000003"):
        trainer.fit()
    assert (tmp_path / "checkpoints" / "step-00000003" / "manifest.json").is_file()


def test_bad_setups_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown divergence 'jensen'"):
        DistillTrainer(_cfg(tmp_path, "method.divergence=jensen"))
    with pytest.raises(ValueError, match="method.name: unknown 'nope'"):
        DistillTrainer(_cfg(tmp_path, "method.name=nope"))
    with pytest.raises(ValueError, match="unknown teacher source"):
        DistillTrainer(_cfg(tmp_path, "teacher.source=hub:edm"))
    with pytest.raises(ValueError, match="needs real data"):
        _teacher = tmp_path / "t"
        train(load_config(TrainConfig, None, [f"run.output_dir={_teacher}", "run.progress=false", "data.source=digits",
                                               "data.image_size=8", "run.batch_size=8", "run.steps=2",
                                               "model.block_out_channels=[8,16]", "data.use_labels=false"]))
        DistillTrainer(_cfg(tmp_path / "d", f"teacher.source=pipeline:{_teacher / 'pipeline'}"))
    with pytest.raises(ValueError, match=r"generator produces \(1, 8, 8\) but the data/teacher space is \(1, 16, 16\)"):
        DistillTrainer(_cfg(tmp_path / "d", f"teacher.source=pipeline:{_teacher / 'pipeline'}", "data.source=digits",
                            "data.image_size=16", "data.use_labels=false"))
    with pytest.raises(ValueError, match="condition mismatch: the data has num_classes=10"):
        DistillTrainer(_cfg(tmp_path / "d", f"teacher.source=pipeline:{_teacher / 'pipeline'}", "data.source=digits",
                            "data.image_size=8"))


def test_image_distillation_from_a_trained_teacher(tmp_path):
    """Core trainer → teacher pipeline → f-distill (JS) on digits → one-step images."""
    train(load_config(TrainConfig, None, [f"run.output_dir={tmp_path / 't'}", "run.progress=false", "data.source=digits",
                                          "data.image_size=8", "run.batch_size=16", "run.steps=3",
                                          "model.block_out_channels=[8,16]"]))
    distill(_cfg(tmp_path / "s", f"teacher.source=pipeline:{tmp_path / 't' / 'pipeline'}", "data.source=digits",
                 "data.image_size=8", "run.batch_size=8", "run.steps=4", "teacher.guidance_scale=2.0",
                 "method.fake_updates_per_generator_update=1"))
    from gendiv import OneStepPipeline

    pipe = OneStepPipeline.from_pretrained(str(tmp_path / "s" / "pipeline"))
    images = pipe(batch_size=3, class_labels=[1, 2, 3]).images
    assert len(images) == 3 and images[0].size == (8, 8)


@pytest.mark.slow
def test_two_process_distillation_under_accelerate(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO / "pipelines" / "distill.py"), f"run.output_dir={tmp_path}", "run.steps=8", "run.checkpoint_every=4",
           *FAST, "method.fake_updates_per_generator_update=2"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    state = json.loads((tmp_path / "checkpoints" / "step-00000008" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


def test_distill_configs_parse_and_the_written_default_matches_the_embedded_one():
    from gendiv.training.config import to_dict

    written, embedded = load_config(DistillConfig, REPO / "configs" / "distill_ring.yaml"), DistillConfig()
    assert to_dict(written) == to_dict(embedded)  # the file spells out the defaults, method options included
    for f in (REPO / "configs").glob("distill_*.yaml"):
        load_config(DistillConfig, f)
