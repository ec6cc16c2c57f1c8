"""Training speed by thread count, alone and beside one busy process (issue 26): ``eval/bench.py threads``.

Each workload runs in its own process, which prints a monotonic timestamp after every training step. While it runs,
the parent alternates phases without and with one busy process (a Python loop that keeps one core fully occupied),
so that drift in the shared machine's speed hits both alike; a phase's rate is the steps completed in it over its
length, after a settling second. Workloads: the README's main job (``gendiv distill`` with no config: f-distill JS
on the analytic ring, an MLP) through the trainer as the command line builds it, and the tiny-UNet DMD step of the
step table.

    python eval/threads.py worker ring auto     # one worker (what the parent starts)
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY = [sys.executable, "-c", "while True: pass"]


def _ring_worker(threads: str, out: str):
    """The main job's trainer with ``run.threads``; every step logged, each log line also printed as a timestamp."""
    from gendiv.training import DistillConfig, distill, load_config
    from gendiv.training.loop import TrainingLoop

    log = TrainingLoop.log

    def log_and_stamp(self, metrics):
        print(time.monotonic(), flush=True)
        log(self, metrics)

    TrainingLoop.log = log_and_stamp
    overrides = [f"run.output_dir={out}", "run.progress=false", "run.steps=10000000", "run.log_every=1",
                 "run.checkpoint_every=10000000", f"run.threads={threads}"]
    distill(load_config(DistillConfig, None, overrides))


def _unet_worker(threads: str):
    """The tiny-UNet DMD step of the step table in gendiv's default configuration, threads as ``run.threads``."""
    sys.path.insert(0, str(ROOT / "eval"))
    import bench

    from gendiv.training.performance import apply_threads, keep_freed_memory, resolve_mixed_precision

    apply_threads(threads if threads == "auto" else int(threads), image_data=True)
    keep_freed_memory("auto")
    net, precision = bench._step_nets(True, "auto"), resolve_mixed_precision("auto", image_data=True)
    while True:
        bench._gendiv_step(net, precision, True)
        print(time.monotonic(), flush=True)


def _stamps(proc: subprocess.Popen, into: list):
    for line in proc.stdout:
        try:
            into.append(float(line))
        except ValueError:
            pass


def _phase_rate(stamps: list, start: float, end: float) -> float:
    """Steps per second completed in [start, end]: between the first and last step inside (or a bound from one)."""
    inside = [t for t in stamps if start <= t <= end]
    if len(inside) >= 3:
        return (len(inside) - 1) / (inside[-1] - inside[0])
    return len(inside) / (end - start)  # 0–2 steps in the phase: a coarse lower bound


def measure(workload: str, threads: str, phases: int = 3, seconds: float = 10.0, ready_s: float = 600.0) -> dict:
    """Median steps/s alone and beside a busy process over ``phases`` alternating pairs of phases."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", workload, threads, str(Path(tmp) / "run")]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        stamps: list[float] = []
        threading.Thread(target=_stamps, args=(proc, stamps), daemon=True).start()
        try:
            deadline = time.monotonic() + ready_s
            while len(stamps) < 3 and time.monotonic() < deadline and proc.poll() is None:  # imports and warm-up
                time.sleep(0.2)
            if len(stamps) < 3:
                raise RuntimeError(f"the {workload} worker did not start stepping ({' '.join(cmd)})")
            rates = {"alone": [], "busy": []}
            for _ in range(phases):
                for kind in ("alone", "busy"):
                    busy = subprocess.Popen(BUSY) if kind == "busy" else None
                    time.sleep(1.0)  # settle: the scheduler places the new process
                    start = time.monotonic()
                    time.sleep(seconds)
                    rates[kind].append(_phase_rate(stamps, start, time.monotonic()))
                    if busy is not None:
                        busy.kill()
                        busy.wait()
        finally:
            proc.kill()
            proc.wait()
    return {kind: statistics.median(v) for kind, v in rates.items()} | {"phases": phases, "seconds": seconds}


def table_rows(phases: int = 3, seconds: float = 10.0) -> list[list]:
    """The rows: the main job at ``auto`` (one thread) and at two threads, the tiny UNet at one
    thread and at ``auto`` (PyTorch's default)."""
    from gendiv.training.performance import STARTUP_THREADS

    rows = []
    for label, workload, threads in (("main job (gendiv distill, 2-D ring, MLP): run.threads auto → 1", "ring", "auto"),
                                     ("main job, 2 threads", "ring", "2"),
                                     ("tiny-UNet DMD step (default config): 1 thread", "unet", "1"),
                                     (f"tiny-UNet DMD step: run.threads auto → {STARTUP_THREADS}", "unet", "auto")):
        r = measure(workload, threads, phases, seconds)
        rows.append([label, r["alone"], r["busy"], f"{r['busy'] / r['alone']:.2f}" if r["alone"] else "–"])
    return rows


def run(args, bench) -> str:
    """The table for ``eval/bench.py threads`` (``args.repeats`` is not used: three pairs of 10-second phases)."""
    from gendiv.training.performance import cpu_flags

    rows = table_rows()
    return (f"{platform.processor() or platform.machine()} with {os.cpu_count()} cores (flags: {' '.join(cpu_flags())}), "
            f"torch {bench.torch.__version__}. Speed alone vs beside one busy process (a Python loop holding one core), steps/s, median of 3 alternating "
            "pairs of 10-s phases in one run; this machine is shared with other jobs, so absolute rates are noisy and "
            "the ratio is the figure (goal: ≥ 0.5 for the main job):\n\n"
            + bench.table(["workload: threads", "steps/s alone", "steps/s beside a busy process", "beside / alone"],
                          rows))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        workload, threads = sys.argv[2], sys.argv[3]
        _ring_worker(threads, sys.argv[4]) if workload == "ring" else _unet_worker(threads)
    else:
        for row in table_rows(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
            print(row, flush=True)
