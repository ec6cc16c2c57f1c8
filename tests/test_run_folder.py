"""Run folders are owned, resumable and never lost (issue 21): a lock per run folder tested with a second real
process, only finite states checkpointed as good, resume from before the first checkpoint, a half-written log line,
content fingerprints compared on resume, and `gendiv sample` never replacing a user's files."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gendiv.cli import main

TRAIN = ["train", "run.progress=false", "eval.num_samples=16", "eval.num_steps=2", "model.hidden=16", "model.depth=1",
         "run.batch_size=16"]

# a second process that owns a run folder the way a run does (RunLock), then sleeps until it is stopped
HOLDER = textwrap.dedent("""
    import sys, time
    from gendiv.training.run_lock import RunLock
    RunLock.acquire(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """Start a process holding ``tmp_path/run``'s lock; yields it, kills it at the end."""
    procs = []

    def start(folder: Path):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _cli(argv, capsys):
    """(exit code, stderr) of one CLI call."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def test_a_second_run_into_a_live_runs_folder_is_refused_by_name(tmp_path, holder, capsys):
    out = tmp_path / "run"
    main(TRAIN + ["run.steps=2", f"run.output_dir={out}"])
    before = _snapshot(out)
    owner = holder(out)
    for flags in ([], ["--resume"], ["--overwrite"]):
        code, err = _cli(TRAIN + ["run.steps=4", f"run.output_dir={out}", *flags], capsys)
        assert code == 2 and f"is in use by another gendiv run (pid {owner.pid} on host" in err, err
        assert len(err.strip().splitlines()) == 1
    assert _snapshot(out) == before and not list(tmp_path.glob("run.old-*"))  # nothing written, nothing moved


def test_a_dead_owners_lock_is_reported_and_taken_over(tmp_path, holder, capsys):
    out = tmp_path / "run"
    owner = holder(out)
    owner.send_signal(signal.SIGKILL)  # killed: no clean release, the record of its pid stays in the lock file
    owner.wait()
    code, err = _cli(TRAIN + ["run.steps=2", f"run.output_dir={out}"], capsys)
    assert code == 0 and f"last owned by a run that ended without releasing it (pid {owner.pid}" in err
    assert (out / "checkpoints" / "step-00000002").is_dir()
    assert (out / ".lock").read_text() == ""  # released cleanly at the end


def test_overwrite_moves_a_finished_run_aside_whole(tmp_path, capsys):
    out = tmp_path / "run"
    main(TRAIN + ["run.steps=2", f"run.output_dir={out}"])
    before = _snapshot(out)
    main(TRAIN + ["run.steps=2", f"run.output_dir={out}", "--overwrite"])
    (moved,) = tmp_path.glob("run.old-*")
    assert _snapshot(moved) == before and (out / "checkpoints" / "step-00000002").is_dir()


def test_after_a_divergence_the_named_checkpoint_resumes(tmp_path, capsys):
    """A learning rate far too high blows the weights up at step 3 (at 1e9, already at step 2, and no checkpoint is
    named); the checkpoint the error names must load and train on."""
    from gendiv.training import NonFiniteError, TrainConfig, load_config, train

    out = tmp_path / "run"
    argv = TRAIN[1:] + [f"run.output_dir={out}", "optim.lr=100", "run.checkpoint_every=1", "run.steps=50"]
    with pytest.raises(NonFiniteError, match=r"Last good checkpoint: (\S+)") as info:
        train(load_config(TrainConfig, None, argv))
    named = info.value.args[0].rsplit("Last good checkpoint: ", 1)[1]
    failed = int(info.value.args[0].split(":")[0].removeprefix("step "))
    ckpts = out / "checkpoints"
    assert named != "none written yet", "the run diverged before any checkpoint; raise optim.lr"
    step = int(Path(named).name.removeprefix("step-"))
    assert step <= failed - 2  # the one before the failed step would fail at once: set aside, not deleted
    assert (ckpts / f"step-{failed - 1:08d}.diverged-1").is_dir()
    assert (ckpts / "latest").read_text() == Path(named).name
    # resumable: one more step from it is finite and checkpointed
    train(load_config(TrainConfig, None, argv[:-1] + [f"run.steps={step + 1}", "run.resume=true"]))
    assert (ckpts / f"step-{step + 1:08d}" / "manifest.json").is_file()


def test_a_run_stopped_before_its_first_checkpoint_restarts_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    common = TRAIN + ["run.steps=4", "run.log_every=1", "run.checkpoint_every=100", f"run.output_dir={out}"]
    main(common + ["run.stop_after=2"])
    assert (out / "metrics.jsonl").is_file() and not (out / "checkpoints").exists()
    code, err = _cli(common, capsys)
    assert code == 2 and "--resume" in err  # the message points at --resume ...
    code, err = _cli(common + ["--resume"], capsys)  # ... and --resume works
    assert code == 0 and "stopped before its first checkpoint" in err and "starts it again from step 0" in err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4]  # each step once: the first attempt's rows were replaced


def test_a_half_written_last_log_line_is_dropped_with_a_warning(tmp_path, capsys):
    out = tmp_path / "run"
    common = TRAIN + ["run.steps=4", "run.log_every=1", "run.checkpoint_every=2", f"run.output_dir={out}"]
    main(common + ["run.stop_after=2"])
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.12')  # killed mid-write
    code, err = _cli(common + ["--resume"], capsys)
    assert code == 0 and "dropped the half-written last line" in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_a_damaged_log_line_in_the_middle_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    common = TRAIN + ["run.steps=4", "run.log_every=1", "run.checkpoint_every=2", f"run.output_dir={out}"]
    main(common + ["run.stop_after=2"])
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(["{broken", *lines[1:]]) + "\n")
    code, err = _cli(common + ["--resume"], capsys)
    assert code == 2 and "metrics.jsonl, line 1, is not JSON" in err


def test_resume_compares_registered_content_fingerprints(tmp_path, capsys):
    """A folder registered as a fingerprint (a teacher, say) retrained in place is refused on resume; the folder
    touched, or moved elsewhere with the same content, is not."""
    import shutil

    from gendiv.training import DiffusionTrainer, TrainConfig, load_config

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text('{"width": 8}')
    (teacher / "weights.safetensors").write_bytes(b"\x01" * 4096)

    class WithTeacher(DiffusionTrainer):
        def __init__(self, cfg, folder=teacher):
            super().__init__(cfg)
            self.config_dict.setdefault("teacher", {})["source"] = f"pipeline:{folder}"  # as distillation configs name it
            self.register_fingerprint("teacher.source", folder)

    argv = TRAIN[1:] + [f"run.output_dir={tmp_path / 'run'}", "run.steps=5", "run.checkpoint_every=1"]
    WithTeacher(load_config(TrainConfig, None, argv + ["run.stop_after=2"])).fit()
    os.utime(teacher / "weights.safetensors", (1, 1))  # touched, not changed
    WithTeacher(load_config(TrainConfig, None, argv + ["run.stop_after=3", "run.resume=true"])).fit()
    moved = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(teacher, moved)
    WithTeacher(load_config(TrainConfig, None, argv + ["run.stop_after=4", "run.resume=true"]), moved).fit()
    (moved / "weights.safetensors").write_bytes(b"\x02" * 4096)  # retrained in place: same size, other content
    with pytest.raises(Exception, match=r"the content of teacher\.source changed since the checkpoint was written"):
        WithTeacher(load_config(TrainConfig, None, argv + ["run.resume=true"]), moved).fit()


def test_folder_fingerprint_sees_content_not_times_and_samples_large_files(tmp_path, monkeypatch):
    from gendiv import fileio

    a = tmp_path / "a"
    a.mkdir()
    (a / "model_index.json").write_text("{}")
    big = a / "unet.safetensors"
    big.write_bytes(np.arange(200_000, dtype=np.float32).tobytes())
    monkeypatch.setattr(fileio, "FULL_HASH_BELOW", 1000)  # hash the 800 kB file by sampled blocks
    monkeypatch.setattr(fileio, "BLOCK", 1024)
    first = fileio.folder_fingerprint(a)
    os.utime(big, (5, 5))
    assert fileio.folder_fingerprint(a) == first
    changed = np.arange(200_000, dtype=np.float32) * 1.0001  # every weight moves, as in retraining
    big.write_bytes(changed.tobytes())
    assert fileio.folder_fingerprint(a) != first
    (a / ".hidden").write_text("x")  # editor files and the run lock do not count
    assert fileio.folder_fingerprint(a) == fileio.folder_fingerprint(a)


def _one_step(tmp_path):
    from gendiv import MLPDenoiser, OneStepGenerator, OneStepPipeline

    OneStepPipeline(student=OneStepGenerator.from_denoiser(MLPDenoiser(dim=2, hidden=8, depth=1))).save_pretrained(
        str(tmp_path / "p"))
    return tmp_path / "p"


def test_sample_never_replaces_existing_outputs(tmp_path, capsys):
    pipe = _one_step(tmp_path)
    argv = ["sample", "--pipeline", str(pipe), "--num-samples", "4", "--out", str(tmp_path / "s")]
    main(argv)
    first = (tmp_path / "s.npz").read_bytes(), (tmp_path / "s.png").read_bytes()
    code, err = _cli(argv + ["--seed", "1"], capsys)
    assert code == 2 and "s.npz already exists; pass --overwrite" in err
    assert ((tmp_path / "s.npz").read_bytes(), (tmp_path / "s.png").read_bytes()) == first
    (tmp_path / "s.npz").unlink()  # the .png alone is protected too
    code, err = _cli(argv + ["--seed", "1"], capsys)
    assert code == 2 and "s.png already exists" in err and not (tmp_path / "s.npz").exists()
    main(argv + ["--seed", "1", "--overwrite"])
    assert (tmp_path / "s.png").read_bytes() != first[1]


def test_sample_and_fid_take_gendivs_own_reflected_and_text_to_image_pipelines(tmp_path, capsys):
    from gendiv.metrics.images import load_images
    from gendiv.testing import tiny_gendiv_pipelines

    pipes = tiny_gendiv_pipelines()
    pipes["ReflectedDiffusionPipeline"].save_pretrained(str(tmp_path / "refl"))
    pipes["OneStepTextToImagePipeline"].save_pretrained(str(tmp_path / "t2i"))
    main(["sample", "--pipeline", str(tmp_path / "refl"), "--num-samples", "3", "--steps", "3",
          "--out", str(tmp_path / "r")])
    with np.load(tmp_path / "r.npz") as d:
        images, declared = d["samples"], list(d["value_range"])
    assert images.shape == (3, 1, 8, 8) and declared == [0, 1] and 0 <= images.min() and images.max() <= 1
    assert len(load_images(str(tmp_path / "r.npz"))) == 3  # `gendiv fid` reads what `gendiv sample` wrote
    assert len(load_images(str(tmp_path / "refl"), num_samples=2)) == 2  # and samples the pipeline itself

    code, err = _cli(["sample", "--pipeline", str(tmp_path / "t2i"), "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and "is a text-to-image pipeline (OneStepTextToImagePipeline): give --prompt TEXT" in err
    main(["sample", "--pipeline", str(tmp_path / "t2i"), "--prompt", "a cat", "--num-samples", "2",
          "--out", str(tmp_path / "t")])
    with np.load(tmp_path / "t.npz") as d:
        assert d["samples"].ndim == 4 and len(d["samples"]) == 2
    code, err = _cli(["fid", str(tmp_path / "t2i"), str(tmp_path / "r.npz"), "--num-samples", "2"], capsys)
    assert code == 2 and "is a text-to-image pipeline: FID needs its prompts" in err and "gendiv sample" in err


def test_internal_errors_show_a_traceback_and_debug_reraises(tmp_path, monkeypatch, capsys):
    """A bug (here a TypeError from torch.cat misuse) is not dressed up as bad input."""
    import torch

    from gendiv.training import diffusion

    def broken_loss(*args, **kwargs):
        return torch.cat(torch.zeros(2))

    monkeypatch.setattr(diffusion, "denoising_loss", broken_loss)
    argv = TRAIN + ["run.steps=2", f"run.output_dir={tmp_path / 'run'}"]
    code, err = _cli(argv, capsys)
    assert code == 1 and "Traceback" in err and "internal error" in err and "cat()" in err
    with pytest.raises(TypeError, match="cat"):
        main(argv + ["--overwrite", "--debug"])
    monkeypatch.setenv("GENDIV_DEBUG", "1")
    with pytest.raises(Exception):  # user errors too: here the folder already holds a run
        main(argv)


def test_one_process_may_reopen_its_own_run_folder(tmp_path):
    """Two trainers of one process on one folder (a notebook resuming) share the lock; the last one gives it up."""
    from gendiv.training.run_lock import RunLock

    first, second = RunLock.acquire(tmp_path), RunLock.acquire(tmp_path)
    assert first is second
    first.release()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()  # still held
    second.release()
    assert (tmp_path / ".lock").read_text() == ""
    RunLock.acquire(tmp_path).release()  # free again
