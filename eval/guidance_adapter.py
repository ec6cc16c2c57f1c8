"""Benchmark ``guidance_adapter``: adapter guidance distillation (docs/guidance.md §6) on the exact class-conditional
suite (conditional2d, whose exact CFG denoiser is closed form). A residual adapter is trained on the exact teacher's
CFG trajectories (s ~ U[1, 5]) and compared, at fixed scales s, with the teacher's own two-pass CFG:

* RMS gap of the one-pass prediction to the two-pass CFG prediction on held-out CFG trajectories at s, beside the
  gap of the unguided (conditional) teacher, which is what the untrained adapter predicts;
* sliced W₂ (per class, mean over classes) of samples drawn with the adapter at one teacher pass per step to samples
  of the teacher's two-pass CFG from the same noise (the ODE samplers are deterministic, so the two sample sets are
  coupled and identical samplers give 0); the same for the conditional teacher (the untrained adapter); and, for
  scale, two-pass CFG against itself from other noise (what sample-size noise alone gives uncoupled). A class has
  two antipodal modes, so a sample that lands in the other mode than its CFG twin moves W₂ a lot: the table also
  splits W₂ into the modes' shapes (samples grouped by nearest mode, sliced W₂ per mode, mean over modes) and the
  modes' weights (total variation between the two sets' mode frequencies);
* teacher passes per Euler step and wall time per sample batch.
Euler, 18 Karras steps everywhere (the adapter's training grid); mean ± std over ``--seeds`` trainings.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

SCALES = (1.5, 3.0, 5.0)
STEPS, POOL, N, NUM_STEPS = 2000, 2048, 4000, 18


def train(out: Path, seed: int):
    from gendiv import GenDivPipeline
    from gendiv.training import load_config
    from gendiv.training.guidance_adapter import GuidanceAdapterConfig, train_guidance_adapter

    if not (out / "pipeline" / "model_index.json").is_file():
        cfg = load_config(GuidanceAdapterConfig, None, [
            f"run.output_dir={out}", f"run.steps={STEPS}", f"run.seed={seed}", "run.progress=false",
            "run.overwrite=true", f"trajectories.pool={POOL}", f"trajectories.num_steps={NUM_STEPS}"])
        train_guidance_adapter(cfg)
    return GenDivPipeline.from_pretrained(str(out / "pipeline")).denoiser  # the exported folder, as a user loads it


def timed_sample(denoiser, cond, seed: int):
    from gendiv.sampling import sample

    t0 = time.perf_counter()
    with torch.no_grad():
        x = sample(denoiser, (len(cond.class_labels), 2), num_steps=NUM_STEPS, sampler="euler", cond=cond,
                   generator=torch.Generator().manual_seed(seed))
    return x, time.perf_counter() - t0


def run(args, bench) -> str:
    from gendiv.condition import Condition, with_guidance_scale
    from gendiv.guidance import ClassifierFreeGuidedDenoiser
    from gendiv.toy import AnalyticDenoiser, get_distribution, sliced_wasserstein2
    from gendiv.training.guidance_adapter import TrajectorySection, cfg_trajectories, guidance_gaps

    dist = get_distribution("conditional2d")
    teacher = AnalyticDenoiser(dist)
    out = Path(__file__).resolve().parents[1] / "runs" / "bench_guidance_adapter"
    rows: dict = {}

    def per_class(x, ref, labels):
        return statistics.fmean(sliced_wasserstein2(x[labels == c], ref[labels == c]) for c in range(dist.num_classes))

    def modes(x):
        return torch.cdist(x.double(), dist.means).argmin(1)

    def per_mode(x, ref):
        mx, mr = modes(x), modes(ref)
        return statistics.fmean(sliced_wasserstein2(x[mx == k], ref[mr == k]) for k in range(len(dist.means)))

    def mode_tv(x, ref):
        k = len(dist.means)
        return 0.5 * float((modes(x).bincount(minlength=k) - modes(ref).bincount(minlength=k)).abs().sum()) / len(x)

    def compare(x, ref):
        return {"w2": per_class(x, ref, labels), "shape": per_mode(x, ref), "tv": mode_tv(x, ref)}

    def add(s, name, **values):
        row = rows.setdefault((f"{s:g}", name), {})
        for k, v in values.items():
            row.setdefault(k, []).append(v)

    for seed in range(args.seeds):
        adapter = train(out / f"seed{seed}_steps{STEPS}", seed)
        labels = torch.arange(N) % dist.num_classes
        cond = Condition(class_labels=labels)
        for s in SCALES:
            section = TrajectorySection(scale_min=s, scale_max=s, num_steps=NUM_STEPS, pool=512)
            held_out = cfg_trajectories(teacher, Condition(class_labels=torch.arange(512) % dist.num_classes),
                                        torch.full((512,), s), (512, 2), section,
                                        torch.Generator().manual_seed(1000 + seed), "cpu")
            gaps = guidance_gaps(adapter, teacher, held_out)
            cfg_x, cfg_t = timed_sample(ClassifierFreeGuidedDenoiser(teacher, s), cond, 100 + seed)
            ref_x, _ = timed_sample(ClassifierFreeGuidedDenoiser(teacher, s), cond, 200 + seed)
            one_x, one_t = timed_sample(lambda x, sig, c: adapter(x, sig, with_guidance_scale(c, s, len(x), x.device)),
                                        cond, 100 + seed)
            plain_x, _ = timed_sample(teacher, cond, 100 + seed)
            add(s, "two-pass CFG (teacher), other noise", **compare(ref_x, cfg_x), passes=2, time=cfg_t)
            add(s, "one-pass adapter", gap=gaps["rms_gap_adapter"], **compare(one_x, cfg_x), passes=1, time=one_t)
            add(s, "untrained adapter (= conditional teacher)", gap=gaps["rms_gap_conditional"],
                **compare(plain_x, cfg_x), passes=1)
    spread = lambda r, k: bench._mean_spread(r[k]) if k in r else "–"  # noqa: E731
    body = [[s, name, spread(r, "gap"), spread(r, "w2"), spread(r, "shape"), spread(r, "tv"), str(r["passes"][0]),
             spread(r, "time")]
            for (s, name), r in rows.items()]
    return (f"conditional2d (exact teacher), residual adapter MLP 128×3 trained {STEPS} steps on {POOL} CFG "
            f"trajectories (s ~ U[1, 5]), Euler {NUM_STEPS} steps, {N} samples per set, W₂ against two-pass CFG "
            f"samples from the same noise, mean ± std over {args.seeds} seeds, {bench.machine()}\n\n"
            + bench.table(["CFG scale s", "sampler", "RMS gap to two-pass CFG x̂₀", "sliced W₂ per class",
                           "sliced W₂ per mode (shapes)", "mode-weight TV", "teacher passes / step",
                           f"wall time per {N}-sample batch (s)"], body))
