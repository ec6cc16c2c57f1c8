"""The consistency and flow-map family on the exact suite (``python eval/bench.py consistency``).

Each new method (CD, iCT, sCM, MeanFlow, few-step DMD2) is trained on the analytic imbalanced ring through the
ordinary trainer (configs/distill_ring_<method>.yaml), then sampled with 1, 2 and 4 network passes. Every row
reports sliced W₂ to exact samples and, where sampling is deterministic, the error to the exact probability-flow map
Φ_{σ_max→σ_min}(σ_max z) of the same latents (gendiv/toy/flow_map.py). The teacher's own 35-NFE Heun sampler has a
row of its own: its exact-map error is the discretisation error of the sampler the one-step students replace.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_STEPS = (1, 2, 4)
RUNS = [  # (row label, config, extra overrides, student passes evaluated)
    ("cd", "distill_ring_cd.yaml", [], SAMPLE_STEPS),
    ("ict (no teacher)", "distill_ring_ict.yaml", [], SAMPLE_STEPS),
    ("scm", "distill_ring_scm.yaml", [], SAMPLE_STEPS),
    ("mean_flow", "distill_ring_mean_flow.yaml", [], SAMPLE_STEPS),
    *[(f"dmd2_few_step (k = {k})", "distill_ring_dmd2_4step.yaml",  # toy_methods' ratio and a shorter warm-up
       [f"method.few_step.steps={k}", "method.fake_updates_per_generator_update=2", "method.fake_warmup_steps=100"],
       (k,)) for k in SAMPLE_STEPS],
]
EVAL_SEED = 12345


def _grid(method, k: int):
    from gendiv.distill.few_step import FewStepSection

    if hasattr(method.options, "few_step") and method.options.few_step.steps != k:
        method.options.few_step = FewStepSection(steps=k)
    return method


def _deterministic(method) -> bool:
    from gendiv.distill.mean_flow import MeanFlow

    return isinstance(method, MeanFlow)


def consistency_job(job: dict) -> dict:
    """One training in a worker with a fixed thread count; returns its rows (one per number of passes)."""
    torch.set_num_threads(job["threads"])
    from gendiv.toy import AnalyticDenoiser, get_distribution, sliced_wasserstein2
    from gendiv.toy.flow_map import exact_flow_map, exact_map_error
    from gendiv.training import DistillConfig, load_config
    from gendiv.training.distill import DistillTrainer

    out = Path(job["out"])
    if out.exists():  # this benchmark's own scratch folder from an earlier run
        shutil.rmtree(out)
    overrides = [f"run.output_dir={out}", "run.progress=false", f"run.steps={job['steps']}", f"run.seed={job['seed']}",
                 f"run.checkpoint_every={job['steps']}", "eval.num_samples=500", *job["overrides"]]
    cfg = load_config(DistillConfig, ROOT / "configs" / job["config"], overrides)
    t = time.time()
    trainer = DistillTrainer(cfg)
    trainer.fit()
    seconds = time.time() - t
    dist = get_distribution("ring8_imbalanced")
    g = torch.Generator().manual_seed(EVAL_SEED + job["seed"])
    z = torch.randn(job["samples"], 2, generator=g)
    data = dist.sample(job["samples"], g)
    exact = exact_flow_map(AnalyticDenoiser(dist), z.double() * 80.0, 80.0, 0.002)
    rows = []
    for k in job["passes"]:
        method = _grid(trainer.method, k)
        x = method.sample(trainer.ema_generator, z, None, generator=torch.Generator().manual_seed(job["seed"]))
        error = exact_map_error(x, exact) if k == 1 or _deterministic(method) else None
        rows.append({"label": job["label"], "nfe": k, "seed": job["seed"], "sliced_w2": sliced_wasserstein2(x, data),
                     "exact_map_error": error, "seconds": seconds})
    return {"rows": rows}


def teacher_rows(samples: int, seeds: int) -> list[dict]:
    """The teacher's 35-NFE Heun sampler (18 Karras steps) from the same latents, per seed."""
    from gendiv.sampling import sample_heun
    from gendiv.space import karras_sigmas
    from gendiv.toy import AnalyticDenoiser, get_distribution, sliced_wasserstein2
    from gendiv.toy.flow_map import exact_flow_map, exact_map_error

    dist = get_distribution("ring8_imbalanced")
    teacher = AnalyticDenoiser(dist)
    rows = []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(EVAL_SEED + seed)
        z = torch.randn(samples, 2, generator=g)
        data = dist.sample(samples, g)
        sigmas = karras_sigmas(18).double()
        x = sample_heun(teacher, z.double() * 80.0, sigmas)
        exact = exact_flow_map(teacher, z.double() * 80.0, 80.0, 0.002)
        rows.append({"label": "teacher (Heun, 18 steps)", "nfe": 35, "seed": seed,
                     "sliced_w2": sliced_wasserstein2(x, data), "exact_map_error": exact_map_error(x, exact),
                     "seconds": None})
    return rows


def _mean_spread(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3g} ± {spread:.2g}"


def _in_subprocess(job: dict) -> dict:
    """``consistency_job`` in a fresh interpreter (eval/ is not a package, so a process pool cannot import it)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, __file__, json.dumps(job)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(f"{job['label']} seed {job['seed']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args, bench) -> str:
    import concurrent.futures
    import subprocess

    jobs = max(1, args.jobs)
    out_root = ROOT / "runs" / "bench_consistency"
    todo = [{"label": label, "config": config, "overrides": overrides, "passes": passes, "seed": seed,
             "steps": args.consistency_steps, "samples": 2000, "threads": 1,
             "out": str(out_root / re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") / f"seed{seed}")}
            for label, config, overrides, passes in RUNS for seed in range(args.seeds)]
    rows = teacher_rows(2000, args.seeds)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for result in pool.map(_in_subprocess, todo):
            for r in result["rows"]:
                print(f"  {r['label']} {r['nfe']} NFE seed {r['seed']}: W2 {r['sliced_w2']:.4f}, "
                      f"exact-map {r['exact_map_error']}", flush=True)
            rows += result["rows"]
    (args.results_dir / "consistency.json").write_text(json.dumps(rows, indent=1))
    groups = {}
    for r in rows:
        groups.setdefault((r["label"], r["nfe"]), []).append(r)
    table_rows = [[label, nfe, _mean_spread(r["sliced_w2"] for r in rs), _mean_spread(r["exact_map_error"] for r in rs),
                   _mean_spread(r["seconds"] for r in rs)] for (label, nfe), rs in groups.items()]
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    return (f"ring8_imbalanced (analytic teacher), {args.consistency_steps} training steps per method "
            f"(configs/distill_ring_<method>.yaml), 2000 samples from the same latents for every row; mean ± std over "
            f"{args.seeds} seeds (run.seed 0..{args.seeds - 1}); {jobs} parallel run(s) × 1 thread; {model}; "
            f"{bench.machine()}. Exact-map error: RMS ‖x − Φ(σ_max z)‖ to the exact probability-flow map "
            "(RK4 in log σ, float64), reported where sampling is deterministic (one pass, or MeanFlow's jumps); "
            "few-step consistency samples re-noise, so only their W₂ is shown.\n\n"
            + bench.table(["model", "NFE", "sliced W₂ ↓", "exact-map error ↓", "train s (mean)"], table_rows))


if __name__ == "__main__":  # one training job (``_in_subprocess``): its rows as the last line of stdout
    import sys

    print(json.dumps(consistency_job(json.loads(sys.argv[1]))))
