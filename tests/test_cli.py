import subprocess
import sys

import numpy as np

from gendiv.cli import main


def test_help_and_config_errors(capsys):
    res = subprocess.run([sys.executable, "-m", "gendiv.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "distill" in res.stdout and "train" in res.stdout
    res = subprocess.run([sys.executable, "-m", "gendiv.cli", "distill", "method.nmae=dmd"], capture_output=True, text=True)
    assert res.returncode == 2 and "nmae" in res.stderr and len(res.stderr.splitlines()) == 1


def test_sample_command_on_a_one_step_pipeline(tmp_path):
    from gendiv import MLPDenoiser, OneStepGenerator, OneStepPipeline

    OneStepPipeline(student=OneStepGenerator.from_denoiser(MLPDenoiser(dim=2, hidden=16, depth=1))).save_pretrained(
        str(tmp_path / "p"))
    main(["sample", "--pipeline", str(tmp_path / "p"), "--num-samples", "10", "--out", str(tmp_path / "s")])
    assert np.load(tmp_path / "s.npz")["samples"].shape == (10, 2)
    assert (tmp_path / "s.png").is_file()


def test_resume_flag_continues_a_stopped_run(tmp_path, capsys):
    from gendiv.training import load_config, TrainConfig, train

    common = [f"run.output_dir={tmp_path}", "run.progress=false", "run.steps=6", "run.checkpoint_every=2",
              "eval.num_samples=32", "eval.num_steps=2"]
    train(load_config(TrainConfig, None, common + ["run.stop_after=4"]))
    main(["train", "--resume", *common])
    assert "resumed from step 4" in capsys.readouterr().out
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert '"step": 6' in rows[-2] or '"step": 6' in rows[-1]


def test_max_minutes_ends_the_run_as_a_finished_one(tmp_path):
    """A wall-time budget ends the run early with what a finished run has: last checkpoint, final log row, export."""
    import json

    import pytest

    from gendiv.training import ConfigError, load_config, TrainConfig, train

    common = [f"run.output_dir={tmp_path}", "run.progress=false", "run.steps=1000000", "run.checkpoint_every=1000",
              "eval.num_samples=32", "eval.num_steps=2"]
    train(load_config(TrainConfig, None, common + ["run.max_minutes=1e-9"]))
    assert [p.name for p in (tmp_path / "checkpoints").glob("step-*")] == ["step-00000001"]
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 1 and any(k.startswith("final/") for k in rows[-1])
    assert (tmp_path / "pipeline" / "model_index.json").is_file()
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ConfigError, match="run.max_minutes"):
            load_config(TrainConfig, None, common + [f"run.max_minutes={bad}"])


def test_the_wall_time_budget_is_the_runs_across_resumes(tmp_path):
    """A resumed run goes on with the clock its checkpoint kept: time_s continues, and run.max_minutes counts the
    time before the resume (a budget the first invocation already spent ends the resumed one after one step).
    Checkpoints written before the clock was kept take it from their step's log row."""
    import json
    import shutil

    from gendiv.training import load_config, TrainConfig, train
    from gendiv.training.checkpoint import write_manifest

    common = [f"run.output_dir={tmp_path}", "run.progress=false", "run.steps=1000000", "run.checkpoint_every=2",
              "run.log_every=1", "eval.num_samples=32", "eval.num_steps=2"]
    train(load_config(TrainConfig, None, common + ["run.stop_after=4"]))
    state = json.loads((tmp_path / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    spent = rows[-1]["time_s"]  # at step 4's log row, just before its checkpoint
    assert state["trained_s"] >= spent > 0

    def resume_with_budget_spent():
        train(load_config(TrainConfig, None, common + ["run.resume=true", f"run.max_minutes={spent / 60}"]))
        rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "time_s" in r]
        assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]  # one step past the checkpoint, then the budget ends it
        assert steps[-1]["time_s"] >= spent and all(a["time_s"] <= b["time_s"] for a, b in zip(steps, steps[1:]))

    resume_with_budget_spent()
    # the same from a checkpoint that predates trainer_state's clock (its step's log row has the time)
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000005")
    folder = tmp_path / "checkpoints" / "step-00000004"
    (folder / "trainer_state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "trained_s"}))
    write_manifest(folder)
    resume_with_budget_spent()
