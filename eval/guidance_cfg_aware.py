"""Benchmark ``guidance_cfg_aware``: CFG-aware training (objective cfg_aware, trained for w = 2) against plain label
dropout (objective edm), both 10% dropout, same MLP, steps and seeds, on the exact class-conditional suite, sampled
with CFG at several scales s. The guided denoiser's RMS gap, on noised data (σ ∈ {0.1, 0.3, 1}), to the data's
conditional denoiser E[x₀ | x, c] (what CFG-aware training aims at when s = w) and to the exact CFG denoiser at s
(what plain training aims at for every s), and the sliced W₂ of the samples to the data's p(x | c) (per class, mean
over classes; the exact sampler's own W₂ is the floor). Heun 18 steps, mean ± std over ``--seeds`` trainings.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import torch

TRAIN_SCALE, SCALES = 2.0, (1.0, 1.5, 2.0, 3.0)


def train(objective: str, out: Path, steps: int, seed: int):
    from gendiv import GenDivPipeline
    from gendiv.cli import main

    if not (out / "pipeline" / "model_index.json").is_file():
        main(["train", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "gft_conditional2d.yaml"),
              f"objective={objective}", f"run.output_dir={out}", f"run.steps={steps}", f"run.seed={seed}",
              "run.progress=false", "eval.num_samples=200", "eval.num_steps=4", f"cfg_aware.scale={TRAIN_SCALE}"])
    return GenDivPipeline.from_pretrained(str(out / "pipeline")).denoiser


def run(args, bench) -> str:
    from gendiv.condition import Condition
    from gendiv.guidance import ClassifierFreeGuidedDenoiser
    from gendiv.sampling import sample
    from gendiv.toy import AnalyticDenoiser, get_distribution, sliced_wasserstein2


    dist, n = get_distribution("conditional2d"), 4000
    exact = AnalyticDenoiser(dist)
    out = Path(__file__).resolve().parents[1] / "runs" / "bench_cfg_aware"
    rows: dict = {}

    def per_class(x, ref, labels):
        return statistics.fmean(sliced_wasserstein2(x[labels == c], ref[labels == c]) for c in range(dist.num_classes))

    def gap(den, target, probe, cond):
        """RMS ‖den − target‖ over noised probes, averaged over σ ∈ {0.1, 0.3, 1}."""
        gaps = []
        for sigma in (0.1, 0.3, 1.0):
            noisy = probe + sigma * torch.randn(probe.shape, generator=torch.Generator().manual_seed(7))
            sig = torch.full((len(probe),), sigma)
            with torch.no_grad():
                diff = den(noisy, sig, cond).double() - target(noisy.double(), sig.double(), cond)
            gaps.append(float(diff.norm(dim=1).pow(2).mean().sqrt()))
        return statistics.fmean(gaps)

    for seed in range(args.seeds):
        models = {name: train(obj, out / f"{obj}_seed{seed}_steps{args.guidance_steps}", args.guidance_steps, seed)
                  for name, obj in (("label dropout", "edm"), (f"CFG-aware (w = {TRAIN_SCALE:g})", "cfg_aware"))}
        labels = dist.sample_labels(n, torch.Generator().manual_seed(100 + seed))
        cond = Condition(class_labels=labels)
        data = dist.sample(n, torch.Generator().manual_seed(200 + seed), class_labels=labels)
        probe = dist.sample(n, torch.Generator().manual_seed(400 + seed), class_labels=labels)
        floor = sample(exact, (n, 2), num_steps=18, cond=cond, generator=torch.Generator().manual_seed(300 + seed))
        rows.setdefault(("–", "exact sampler (floor)"), {"data_gap": [], "cfg_gap": [], "w2": []})["w2"].append(
            per_class(floor, data, labels))
        for s in SCALES:
            for name, den in models.items():
                guided = ClassifierFreeGuidedDenoiser(den, s)
                with torch.no_grad():
                    x = sample(guided, (n, 2), num_steps=18, cond=cond, generator=torch.Generator().manual_seed(seed))
                row = rows.setdefault((f"{s:g}", name), {"data_gap": [], "cfg_gap": [], "w2": []})
                row["data_gap"].append(gap(guided, exact, probe, cond))
                row["cfg_gap"].append(gap(guided, ClassifierFreeGuidedDenoiser(exact, s), probe, cond))
                row["w2"].append(per_class(x, data, labels))
    spread = lambda v: bench._mean_spread(v) if v else "–"  # noqa: E731
    body = [[s, name, spread(r["data_gap"]), spread(r["cfg_gap"]), spread(r["w2"])] for (s, name), r in rows.items()]
    return (f"conditional2d, MLP 128×3, {args.guidance_steps} training steps per model, {n} samples, Heun 18 steps, "
            f"mean ± std over {args.seeds} seeds, {bench.machine()}\n\n"
            + bench.table(["CFG scale s", "training", "denoiser gap to the data's E[x₀∣x, c]",
                           "denoiser gap to exact CFG at s", "sliced W₂ to the data p(x∣c)"], body))
