"""The benchmark harness runs and regenerates marked README sections (timings are printed, never asserted)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_harness_regenerates_a_readme_section(tmp_path):
    spec = importlib.util.spec_from_file_location("bench", ROOT / "eval" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:toy_sampler -->\nold\n<!-- /bench:toy_sampler -->\nend\n")
    bench.main(["toy_sampler", "--update-readme", "--readme", str(readme), "--results-dir", str(tmp_path / "r")])
    text = readme.read_text()
    assert "old" not in text and "ring8_imbalanced" in text and text.endswith("end\n")
    assert (tmp_path / "r" / "toy_sampler.md").is_file()


def test_train_run_records_wall_time_and_reuse_keeps_a_finished_run(tmp_path):
    spec = importlib.util.spec_from_file_location("bench", ROOT / "eval" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = tmp_path / "teacher"
    seconds = bench._train_run("teacher_ring.yaml", run, ["run.steps=2", "eval.num_samples=50"])
    record = run / "wall_s.json"
    assert record.is_file() and (run / "pipeline" / "model_index.json").is_file()
    stamp = (run / "pipeline" / "model_index.json").stat().st_mtime_ns
    assert bench._train_run("teacher_ring.yaml", run, ["run.steps=2"], reuse=True) == seconds  # not retrained
    assert (run / "pipeline" / "model_index.json").stat().st_mtime_ns == stamp
    # extended: resumed from its last checkpoint to more steps, the time of both invocations recorded
    more = bench._train_run("teacher_ring.yaml", run, ["run.steps=4", "eval.num_samples=50"], extend=True)
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert more > seconds and max(steps) == 4 and (run / "checkpoints" / "step-00000004").is_dir()
    assert json.loads(record.read_text())["wall_s"] == more
