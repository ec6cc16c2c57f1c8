"""Training σ from a Laplace log-SNR against EDM's lognormal on digits (``python eval/bench.py noise_schedule``).

Hang et al. 2024 ("Improved Noise Schedule for Diffusion Training") draw λ = log SNR from a Laplace law centred at 0,
which spends the training budget on mid noise levels. Both rows train configs/teacher_digits_laplace.yaml (the second
with optim.sigma_sampler=lognormal, the project's default) for the same ``--schedule-steps`` steps, and are scored by
gendiv's offline FID of 500 samples against the 1,797 real digits.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench_noise_schedule"  # scratch runs of this benchmark, replaced on every run
# the Cauchy variant (optim.sigma_sampler: cauchy) is tested against its law but not run here, to keep this to minutes
SAMPLERS = (("lognormal (EDM, ln σ ~ N(−1.2, 1.2²))", "lognormal"), ("Laplace log-SNR (μ = 0, b = 0.5)", "laplace"))


def run(args, bench) -> str:
    from gendiv.metrics.fid import compute_features
    from gendiv.metrics.frechet import FeatureStats, frechet_distance, kid
    from gendiv.metrics.images import dataset_images, pipeline_images

    torch.set_num_threads(1)
    steps, n = args.schedule_steps, 500
    ref_feats = compute_features(dataset_images("digits"), progress=False)
    ref = FeatureStats.from_features(ref_feats)
    results = {label: [] for label, _ in SAMPLERS}
    for seed in range(args.seeds):
        for label, kind in SAMPLERS:
            run_dir = OUT / kind / f"seed{seed}"
            train_s = bench._train_run("teacher_digits_laplace.yaml", run_dir, [
                f"run.steps={steps}", f"run.seed={seed}", f"optim.sigma_sampler={kind}",
                f"run.checkpoint_every={steps}",
                f"run.sample_every={steps}"])
            t = time.time()
            images = pipeline_images(run_dir / "pipeline", n, seed=seed)
            feats = compute_features(images, progress=False)
            fid = frechet_distance(ref, FeatureStats.from_features(feats))
            results[label].append((fid, train_s, time.time() - t, 1e3 * kid(ref_feats, feats)[0]))
            print(f"  {label} seed {seed}: FID {fid:.1f}", flush=True)
    rows = [[label, bench._mean_spread([r[0] for r in rs]), bench._mean_spread([r[3] for r in rs]),
             bench._mean_spread([r[1] for r in rs])] for label, rs in results.items()]
    return (f"Digits 16×16, class-conditional UNet (32/64), {steps} training steps each, FID of {n} samples against "
            f"the 1,797 real digits{bench.fid_caveat(n)}; mean ± std over {args.seeds} seeds; {bench.machine()}\n\n"
            + bench.table(["training σ sampler", "FID ↓", "KID × 10³ ↓", "train s"], rows))
