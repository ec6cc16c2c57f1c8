import subprocess
import sys

import numpy as np

from gendiv.cli import main


def test_help_and_config_errors(capsys):
    res = subprocess.run([sys.executable, "-m", "gendiv.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "distill" in res.stdout and "train" in res.stdout
    res = subprocess.run([sys.executable, "-m", "gendiv.cli", "distill", "method.nmae=dmd"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown config key 'nmae' in method" in res.stderr


def test_sample_command_on_a_one_step_pipeline(tmp_path):
    from gendiv import MLPDenoiser, OneStepGenerator, OneStepPipeline

    OneStepPipeline(student=OneStepGenerator.from_denoiser(MLPDenoiser(dim=2, hidden=16, depth=1))).save_pretrained(
        str(tmp_path / "p"))
    main(["sample", "--pipeline", str(tmp_path / "p"), "--num-samples", "10", "--out", str(tmp_path / "s")])
    assert np.load(tmp_path / "s.npz")["samples"].shape == (10, 2)
    assert (tmp_path / "s.png").is_file()
