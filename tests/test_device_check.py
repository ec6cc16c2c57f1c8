"""The device check (eval/device_check.sh, eval/device.py): without a GPU it skips cleanly and touches nothing; its
measuring code runs end to end on the CPU at toy sizes, so a GPU run is not its first run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _eval_modules():
    sys.path.insert(0, str(ROOT / "eval"))
    import bench

    return bench, bench.eval_module("device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path without a GPU")
def test_without_a_gpu_the_check_skips_cleanly_and_leaves_results_and_readme_alone(tmp_path):
    _, device = _eval_modules()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:device -->\nnot run yet\n<!-- /bench:device -->\n")
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}  # no nvidia-smi on this PATH
    script = subprocess.run(["bash", str(ROOT / "eval" / "device_check.sh")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert script.returncode == 0 and "measured nothing" in script.stdout, script.stdout + script.stderr
    bench = subprocess.run([sys.executable, str(ROOT / "eval" / "bench.py"), "device", "--update-readme",
                            "--results-dir", str(tmp_path / "results"), "--readme", str(readme)],
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0 and device.SKIP_MESSAGE in bench.stdout, bench.stdout + bench.stderr
    assert not (tmp_path / "results" / "device.md").exists()
    assert readme.read_text() == "<!-- bench:device -->\nnot run yet\n<!-- /bench:device -->\n"


def test_the_measuring_code_runs_on_the_cpu_at_toy_sizes():
    """Kernels, the two steps, peak memory for full copies and LoRA (with and without checkpointing) and a few steps
    of the CIFAR-shaped config shrunk to a toy UNet: every table is there and every loss is finite."""
    bench, device = _eval_modules()
    md = device.report(bench.table, "cpu", kernel_shapes=[(4, 3, 8, 8)], step_shape=(2, 3, 16, 16), widths=(8, 16), attention=False,
                       repeats=1, config_steps=2, kernel_backends=["eager"], sd_widths=(16, 32), latent_size=8, sd_batch=2,
                       config_overrides=["model.block_out_channels=[8,16]", "model.attention=false", "run.batch_size=4",
                                         "run.mixed_precision=no", "run.log_every=1"])
    assert "CPU dry run" in md and "NOT FINITE" not in md
    for row in ("| 4×3×8×8 | difference | eager |", "| 4×3×8×8 | f-distill weighting | eager |",
                "| plain DMD2-style loop, fp32 |", "| full |", "| lora |", "| lora+checkpointing |",
                "| teacher_cifar10_gpu.yaml | 4 | 2 |"):
        assert row in md, row
    assert md.count("finite") >= 4
