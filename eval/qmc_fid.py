"""How much Sobol (quasi-Monte-Carlo) latents reduce the seed-to-seed spread of FID and KID (issue 23), ``eval/bench.py
qmc_fid``.

A small setting that needs no training: a one-step generator that is the Gaussian fitted to scikit-learn's 8×8
digits (x = μ + U Λ^½ z, z ~ N(0, I₆₄): the maximum-likelihood linear-Gaussian model of the 1,797 digits, sampled
by one matrix product). For each of ``--seeds`` seeds it draws ``--qmc-samples`` latents i.i.d. and as one scrambled
Sobol set (gendiv.latents, the same option as ``OneStepPipeline(latents_sampler="sobol")``), and scores both sets
against all 1,797 digits with gendiv's offline Inception features. The table gives the mean and standard deviation
over seeds of FID and KID for each sampler, and the ratio of the variances (the variance reduction). The generator
is linear in z, which favours QMC; a deep generator smooths less, so expect a smaller reduction there.
"""
from __future__ import annotations

import statistics

import numpy as np
import torch


def gaussian_digits_generator():
    """(μ, A) with A = U Λ^½ from the digits' pixel covariance (images in [−1, 1], 64 pixels)."""
    from sklearn.datasets import load_digits

    x = load_digits().images.reshape(-1, 64) / 16.0 * 2 - 1
    mu = x.mean(0)
    eigenvalues, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    return torch.from_numpy(mu).float(), torch.from_numpy(vectors * np.sqrt(np.clip(eigenvalues, 0, None))).float()


def images_of(latents: torch.Tensor, mu: torch.Tensor, a: torch.Tensor) -> list[np.ndarray]:
    """Generated 8×8 digits as RGB uint8 arrays for the Inception features."""
    from gendiv.metrics.images import to_rgb_uint8

    x = (mu + latents @ a.T).clamp(-1, 1).reshape(-1, 8, 8)
    return [to_rgb_uint8(im) for im in ((x + 1) * 127.5).round().to(torch.uint8).numpy()]


def run(args, bench) -> str:
    from gendiv.latents import sample_latents
    from gendiv.metrics import FeatureStats, compute_features, frechet_distance, kid
    from gendiv.metrics.images import dataset_images

    n, seeds = args.qmc_samples, args.seeds
    ref_feats = compute_features(dataset_images("digits"), progress=False)
    ref = FeatureStats.from_features(ref_feats)
    mu, a = gaussian_digits_generator()
    scores = {sampler: {"fid": [], "kid": []} for sampler in ("gaussian", "sobol")}
    for seed in range(seeds):
        for sampler, out in scores.items():
            z = sample_latents((n, 64), torch.Generator().manual_seed(seed), sampler)
            feats = compute_features(images_of(z, mu, a), progress=False)
            out["fid"].append(frechet_distance(ref, FeatureStats.from_features(feats)))
            out["kid"].append(kid(ref_feats, feats, subsets=50, subset_size=min(n, 1000))[0] * 1e3)
            print(f"  seed {seed} {sampler}: FID {out['fid'][-1]:.2f}, KID×10³ {out['kid'][-1]:.2f}", flush=True)
    rows = []
    for metric in ("fid", "kid"):
        var = {s: statistics.variance(v[metric]) for s, v in scores.items()}
        for sampler, v in scores.items():
            rows.append([{"fid": "FID", "kid": "KID × 10³"}[metric], sampler, bench._mean_spread(v[metric]),
                         f"{var['gaussian'] / var[sampler]:.2f}" if var[sampler] > 0 else "∞"])
    return (f"Seed-to-seed spread of FID and KID with i.i.d. vs scrambled-Sobol latents: the Gaussian fitted to the "
            f"8×8 digits as a one-step generator (no training), {n} samples per set (FID of {n} samples is biased "
            f"high: compare the spreads, not the levels), against all 1,797 digits, {seeds} seeds, {bench.machine()}"
            "\n\n" + bench.table(["metric", "latents", "mean ± std over seeds", "variance reduction (i.i.d. / this)"],
                                 rows))
