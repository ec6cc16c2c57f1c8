"""Benchmark ``guidance_cfg_aware``: CFG-aware training (objective cfg_aware, trained for w = 2) against plain label
dropout (objective edm), both 10% dropout, same MLP, steps and seeds, on the exact class-conditional suite, sampled
with CFG at several scales s. Two distances per class (sliced W₂, mean over classes): to the data's conditional
p(x | c), which CFG-aware training aims at when s = w, and to the exact CFG target p(x | c)^s p(x)^(1−s), which plain
training aims at for every s. Heun 18 steps, mean ± std over ``--seeds`` trainings.
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

    cpu_name = bench.eval_module("guidance_gradient").cpu_name

    dist, n = get_distribution("conditional2d"), 2000
    exact = AnalyticDenoiser(dist)
    out = Path(__file__).resolve().parents[1] / "runs" / "bench_cfg_aware"
    rows: dict = {}

    def per_class(x, ref, labels):
        return statistics.fmean(sliced_wasserstein2(x[labels == c], ref[labels == c]) for c in range(dist.num_classes))

    for seed in range(args.seeds):
        models = {name: train(obj, out / f"{obj}_seed{seed}_steps{args.guidance_steps}", args.guidance_steps, seed)
                  for name, obj in (("label dropout", "edm"), (f"CFG-aware (w = {TRAIN_SCALE:g})", "cfg_aware"))}
        labels = dist.sample_labels(n, torch.Generator().manual_seed(100 + seed))
        cond = Condition(class_labels=labels)
        data = dist.sample(n, torch.Generator().manual_seed(200 + seed), class_labels=labels)
        for s in SCALES:
            target = sample(ClassifierFreeGuidedDenoiser(exact, s), (n, 2), num_steps=18, cond=cond,
                            generator=torch.Generator().manual_seed(300 + seed))
            for name, den in models.items():
                with torch.no_grad():
                    x = sample(ClassifierFreeGuidedDenoiser(den, s), (n, 2), num_steps=18, cond=cond,
                               generator=torch.Generator().manual_seed(seed))
                row = rows.setdefault((s, name), {"data": [], "cfg": []})
                row["data"].append(per_class(x, data, labels))
                row["cfg"].append(per_class(x, target, labels))
    body = [[f"{s:g}", name, bench._mean_spread(r["data"]), bench._mean_spread(r["cfg"])]
            for (s, name), r in rows.items()]
    return (f"conditional2d, MLP 128×3, {args.guidance_steps} training steps per model, {n} samples, Heun 18 steps, "
            f"mean ± std over {args.seeds} seeds, {torch.get_num_threads()} thread(s), {cpu_name()}, "
            f"{bench.machine()}\n\n"
            + bench.table(["CFG scale s", "training", "sliced W₂ to the data p(x∣c)",
                           "sliced W₂ to exact CFG at s"], body))
