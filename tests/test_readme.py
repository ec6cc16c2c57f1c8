"""Every ```python block of the README runs as written (in a temporary working directory)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path):
    (tmp_path / "configs").symlink_to(README.parent / "configs")  # the README's paths are relative to the repo root
    subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, check=True, timeout=600)


def test_readme_commands_are_the_ci_commands():
    ci = (README.parent / ".ci" / "run").read_text()
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert bash[1].strip() in ci


def test_readme_stock_pipeline_distill_command(tmp_path):
    """The stock-diffusers-teacher example: its python block, then its one-line distill command, as written."""
    block = next(b for b in BLOCKS if "readme_ddpm" in b)
    subprocess.run([sys.executable, "-c", block], cwd=tmp_path, check=True, timeout=600)
    line = next(line for line in README.read_text().splitlines() if line.startswith("gendiv distill teacher.source=runs/readme_ddpm"))
    subprocess.run([sys.executable, "-m", "gendiv.cli", *line.split()[1:], "run.progress=false"], cwd=tmp_path,
                   check=True, timeout=600)
    assert (tmp_path / "runs" / "readme_ddpm_dmd" / "pipeline" / "model_index.json").is_file()
