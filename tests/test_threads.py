"""run.threads (issue 26): auto gives point models one torch thread and image models PyTorch's default, set when a
trainer starts; bad values are config errors; the CPU flags the step benchmark reports come from /proc/cpuinfo."""
from pathlib import Path

import pytest
import torch

from gendiv.training import ConfigError, RunConfig
from gendiv.training.loop import TrainingLoop
from gendiv.training.performance import CPU_FLAGS_OF_INTEREST, STARTUP_THREADS, cpu_flags, resolve_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_is_one_thread_for_points_and_the_default_for_images():
    assert resolve_threads("auto", image_data=False) == 1
    assert resolve_threads("auto", image_data=True) == STARTUP_THREADS
    assert resolve_threads(3, image_data=False) == 3


@pytest.mark.parametrize("image_data, want", [(False, 1), (True, STARTUP_THREADS)])
def test_a_trainer_sets_the_thread_count_at_start(tmp_path, restore_threads, image_data, want):
    torch.set_num_threads(2 if want == 1 else 1)  # something else first, so that the trainer has to change it
    loop = TrainingLoop(RunConfig(output_dir=str(tmp_path / "run"), progress=False), image_data=image_data)
    assert loop.threads == want == torch.get_num_threads()
    TrainingLoop(RunConfig(output_dir=str(tmp_path / "run2"), threads=1, progress=False), image_data=True)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "two"])
def test_bad_thread_counts_are_config_errors(bad):
    with pytest.raises(ConfigError, match="run.threads must be auto or an integer ≥ 1"):
        RunConfig(threads=bad)


def test_cpu_flags_are_the_ones_proc_cpuinfo_lists():
    flags = cpu_flags()
    assert set(flags) <= set(CPU_FLAGS_OF_INTEREST)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        listed = next(line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags"))
        assert flags == [f for f in CPU_FLAGS_OF_INTEREST if f in listed]
