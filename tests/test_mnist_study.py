"""The MNIST study's bookkeeping (eval/mnist_study.py): what its curves are plotted against must be right."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("mnist_study_under_test", ROOT / "eval" / "mnist_study.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_updates_follow_the_method_schedule(study):
    from gendiv.distill.contract import method_class
    from gendiv.distill.options import MethodOptions

    def count(section, steps):
        options = MethodOptions.parse_section(section, "method")
        return study.generator_updates(method_class(options.name)(options), steps)

    # DMD2: a warm-up of 100 fake-only steps, then every step updates the fake score and every 5th the generator too
    dmd2 = {"name": "dmd2", "fake_warmup_steps": 100, "fake_updates_per_generator_update": 5}
    assert count(dmd2, 100) == 0
    assert count(dmd2, 100 + 5 * 37) == 37
    assert count(dmd2, 100 + 5 * 37 + 1) == 38
    sid = {"name": "sid", "fake_warmup_steps": 10, "fake_updates_per_generator_update": 1}
    assert count(sid, 10 + 25) == 25


def test_checkpoint_nearest_a_wall_time(study, tmp_path):
    rows = [{"step": s, "time_s": 6.0 * s} for s in (50, 100, 150)] + [{"step": 150}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for s in (50, 100, 150):
        (tmp_path / "checkpoints" / f"step-{s:08d}").mkdir(parents=True)
    assert study._checkpoint_at(tmp_path, 10.4)[0].name == "step-00000100"   # 600 s
    assert study._checkpoint_at(tmp_path, 99)[0].name == "step-00000150"     # past the end: the last one
    assert study._checkpoint_at(tmp_path, 0)[0].name == "step-00000050"


def test_extrapolation_recovers_a_power_law(study):
    t = np.array([2.0, 4, 8, 16, 32, 50])
    points = [{"wall_s": 60 * x, "fid": 10 + 200 * x ** -0.8} for x in t]
    text = study.extrapolate(points, target=15.0)
    expected = (5 / 200) ** (-1 / 0.8)  # 10 + 200 t^-0.8 = 15 at t ≈ 100 minutes
    assert "10.0 +" in text and f"about {expected:.0f} minutes" in text
    assert "stays above" in study.extrapolate(points, target=9.0)
    assert study.extrapolate(points[:3], target=15.0) == "too few points to extrapolate"


def test_every_study_row_is_a_valid_config(study):
    from gendiv.training import load_config
    from gendiv.training.distill import DistillConfig

    for overrides in [*(o for o, _ in study.LONG.values()), *study.METHODS.values(), *study.ABLATIONS.values()]:
        cfg = load_config(DistillConfig, ROOT / "configs" / study.BASE,
                          ["teacher.source=pipeline:eval/artifacts/teacher_mnist", *study.STUDY, "run.max_minutes=1", *overrides])
        assert cfg.run.max_minutes == 1


def test_extrapolation_says_when_the_teacher_is_reached(study):
    points = [{"wall_s": 60 * x, "fid": 30 / x, "generator_updates": 100 * x} for x in (1.0, 2, 4, 8, 16)]
    assert study.extrapolate(points, target=5.0) == ("it reached the teacher's 5.0 at 8 minutes (3.8, 800 generator "
                                                     "updates) and ended at 1.9")


def test_the_sid_config_is_the_studys_sid_row(study):
    """configs/distill_sid_mnist.yaml is what the study measured as "SiD" (same method, σ laws, optimiser, budgetless)."""
    from gendiv.training import load_config
    from gendiv.training.config import to_dict
    from gendiv.training.distill import DistillConfig

    row = load_config(DistillConfig, ROOT / "configs" / study.BASE, study.METHODS["SiD"])
    written = load_config(DistillConfig, ROOT / "configs" / "distill_sid_mnist.yaml")
    row, written = to_dict(row), to_dict(written)
    row["run"]["output_dir"] = written["run"]["output_dir"]
    assert row == written


def _saved_run(study, run, overrides, edit=lambda saved: None):
    """A finished run's folder as the study reads it: the resolved config of ``overrides`` in its newest checkpoint."""
    from gendiv.training import load_config
    from gendiv.training.config import to_dict
    from gendiv.training.distill import DistillConfig

    saved = to_dict(load_config(DistillConfig, ROOT / "configs" / study.BASE, overrides))
    edit(saved)
    folder = run / "checkpoints" / "step-00000050"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(saved, default=str))


def test_a_cached_run_is_reused_only_with_the_config_asked_for(study, tmp_path):
    """Reuse compares the run's saved config with the job's (the base file may have changed since it ran); keys a
    run predates count as their defaults."""
    def older_run_elsewhere(saved):
        saved["run"]["output_dir"] = "/elsewhere"             # paths are not compared
        del saved["optim"]["ema_std"]                         # written before the key existed: its default holds

    overrides = [*study.STUDY, "run.max_minutes=3", "method.fake_updates_per_generator_update=5"]
    _saved_run(study, tmp_path, overrides, older_run_elsewhere)
    study.check_reusable(tmp_path, overrides)
    with pytest.raises(RuntimeError, match=r"method.fake_updates_per_generator_update: ran 5, asked 2"):
        study.check_reusable(tmp_path, [*overrides, "method.fake_updates_per_generator_update=2"])
    with pytest.raises(RuntimeError, match=r"optim.ema_std: ran None, asked 0.05"):
        study.check_reusable(tmp_path, [*overrides, "optim.ema_std=0.05"])
    # the same config with more minutes: the run is extended, not retrained; with fewer, refused; once extended
    # (resumed: run.resume is true in its saved config) it is the run asked for
    assert study.check_reusable(tmp_path, overrides) is False
    assert study.check_reusable(tmp_path, [*overrides, "run.max_minutes=5"]) is True
    with pytest.raises(RuntimeError, match=r"run.max_minutes: ran 3.0, asked 2.0"):
        study.check_reusable(tmp_path, [*overrides, "run.max_minutes=2"])
    _saved_run(study, tmp_path / "extended", [*overrides, "run.max_minutes=5", "run.resume=true"])
    assert study.check_reusable(tmp_path / "extended", [*overrides, "run.max_minutes=5"]) is False


def test_a_cached_run_of_another_method_is_reused(study, tmp_path):
    """A method's own keys (f-distill's divergence) have no value in the base recipe's defaults: the saved value counts."""
    overrides = [*study.STUDY, "run.max_minutes=3", *study.METHODS["f-distill (JS + GAN)"]]
    _saved_run(study, tmp_path, overrides)
    study.check_reusable(tmp_path, overrides)
    with pytest.raises(RuntimeError, match=r"method.divergence: ran 'jensen_shannon', asked 'forward_kl'"):
        study.check_reusable(tmp_path, [*overrides, "method.divergence=forward_kl"])


def test_rows_filter_trains_only_the_rows_named(study):
    import argparse

    args = argparse.Namespace(mnist_sweep_minutes=5, mnist_ablation_minutes=5, mnist_minutes=60,
                              mnist_paper_minutes=0, curve_samples=500, fid_samples=500, mnist_rows="SiD|ablation: bf16")
    jobs, evals = study.plan(args, ROOT / "eval" / "artifacts" / "teacher_mnist")
    assert sorted(j["label"] for j in jobs) == ["SiD", "SiDA", "ablation: bf16 autocast (native on this CPU)"]
    assert evals == [] and all(j["minutes"] == 5 for j in jobs)
    args.mnist_rows = "no such row"
    with pytest.raises(ValueError, match="names no row of the study"):
        study.plan(args, ROOT)
    args.mnist_rows = ""
    jobs, evals = study.plan(args, ROOT)
    labels = [j["label"] for j in jobs if j["kind"] == "train"]
    assert "DMD2, TTUR 5 (as published)" not in labels and study.KEPT in labels  # paper minutes 0: left out
    assert len(labels) == 1 + len(study.METHODS) + len(study.ABLATIONS) and evals
