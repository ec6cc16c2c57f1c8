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
    subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, check=True, timeout=600)


def test_readme_commands_are_the_ci_commands():
    ci = (README.parent / ".ci" / "run").read_text()
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert bash[1].strip() in ci
