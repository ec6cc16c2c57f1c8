"""Teacher objectives on the exact suite (``python eval/bench.py teacher_objectives``; issue 25).

Every row trains a registered objective from its config through the ordinary trainer (``--objective-steps`` steps,
1 thread) and scores it against a closed-form truth:

- pseudo_huber vs edm (L2) on ring8 with 10% corrupted samples (configs/teacher_ring_outliers_pseudo_huber.yaml):
  sliced W₂ to the *clean* ring and the share of samples off it (log p_clean < −10).
- input_perturbation vs edm on ring8 (configs/teacher_ring_input_perturbation.yaml): sliced W₂ of Euler samples at
  3, 6 and 18 steps; the exposure-bias gap is W₂(3 steps) − W₂(18 steps).
- mirror_flow on the simplex (Dirichlet) and the ball (uniform): largest mean and covariance error against the closed
  form and the share of samples inside the domain; on box_corner, mirror flow (domain box) next to reflected
  diffusion (configs/reflected_box_corner_likelihood.yaml): sliced W₂ and exact log-likelihood of the samples.
- reflected likelihood: the trained reflected model's NLL of held-out points through the probability-flow ODE (plain,
  and with the drift mollified at the walls), next to the true −log p_{σ_min} of the same points; and the ODE with the
  exact score against the closed form.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench_teacher_objectives"  # scratch runs of this benchmark, replaced on every run
EULER_STEPS = (3, 6, 18)


def _final_metrics(run: Path) -> dict:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {k.removeprefix("final/"): v for k, v in json.loads(lines[-1]).items() if k.startswith("final/")}


def _edm_samples(run: Path, steps: int, seed: int) -> torch.Tensor:
    from gendiv import load_pipeline
    from gendiv.sampling import sample

    denoiser = load_pipeline(str(run / "pipeline")).denoiser
    with torch.no_grad():
        return sample(denoiser, (2000, 2), num_steps=steps, sampler="euler",
                      generator=torch.Generator().manual_seed(seed))


def _robust_rows(bench, train, seed: int) -> list:
    from gendiv.toy import get_distribution, sliced_wasserstein2

    clean = get_distribution("ring8_imbalanced")
    ref = clean.sample(2000, torch.Generator().manual_seed(100 + seed))
    rows = []
    for label, objective in (("L2 (edm)", "edm"), ("pseudo-Huber (c₀ = 0.1)", "pseudo_huber")):
        run = OUT / f"outliers_{objective}" / f"seed{seed}"
        seconds = train("teacher_ring_outliers_pseudo_huber.yaml", run, [f"objective={objective}", f"run.seed={seed}"])
        x = _edm_samples(run, 18, seed)
        off = float((clean.log_prob(x, 0.0) < -10).double().mean())
        rows.append({"table": "robust", "label": label, "seed": seed, "sliced_w2_clean": sliced_wasserstein2(x, ref),
                     "off_ring": off, "seconds": seconds})
    return rows


def _perturbation_rows(bench, train, seed: int) -> list:
    from gendiv.toy import get_distribution, sliced_wasserstein2

    dist = get_distribution("ring8_imbalanced")
    ref = dist.sample(2000, torch.Generator().manual_seed(100 + seed))
    rows = []
    for label, objective in (("edm", "edm"), ("input_perturbation (γ = 0.1)", "input_perturbation")):
        run = OUT / f"ring_{objective}" / f"seed{seed}"
        seconds = train("teacher_ring_input_perturbation.yaml", run, [f"objective={objective}", f"run.seed={seed}"])
        w2 = {n: sliced_wasserstein2(_edm_samples(run, n, seed), ref) for n in EULER_STEPS}
        rows.append({"table": "perturbation", "label": label, "seed": seed, **{f"w2_{n}": v for n, v in w2.items()},
                     "gap": w2[EULER_STEPS[0]] - w2[EULER_STEPS[-1]], "seconds": seconds})
    return rows


def _mirror_rows(bench, train, seed: int) -> list:
    from gendiv import MirrorFlowMatchingPipeline
    from gendiv.mirror import inside_mask
    from gendiv.toy import get_distribution, mean_log_likelihood, sliced_wasserstein2

    rows = []
    for label, config, domain in (("mirror flow, simplex (dirichlet_3)", "mirror_flow_dirichlet.yaml", "simplex"),
                                  ("mirror flow, ball (ball_uniform)", "mirror_flow_ball.yaml", "ball")):
        run = OUT / config.removesuffix(".yaml") / f"seed{seed}"
        seconds = train(config, run, [f"run.seed={seed}"])
        m = _final_metrics(run)
        rows.append({"table": "mirror", "label": label, "seed": seed, "mean_error": m["mean_error"],
                     "cov_error": m["cov_error"], "inside": m["inside_fraction"], "seconds": seconds})
    dist = get_distribution("box_corner")
    ref = dist.sample(2000, torch.Generator().manual_seed(100 + seed))
    run = OUT / "mirror_flow_box" / f"seed{seed}"
    seconds = train("mirror_flow_dirichlet.yaml", run, [f"run.seed={seed}", "data.source=toy:box_corner",
                                                       "mirror_flow.domain=box"])
    pipe = MirrorFlowMatchingPipeline.from_pretrained(str(run / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    x = pipe(batch_size=2000, num_inference_steps=100, generator=torch.Generator().manual_seed(seed)).images
    rows.append({"table": "box", "label": "mirror flow (logit map)", "seed": seed,
                 "sliced_w2": sliced_wasserstein2(x, ref), "log_lik": mean_log_likelihood(dist, x.clamp(0, 1)),
                 "inside": float(inside_mask(x, "box").double().mean()),
                 "seconds": seconds})
    run = OUT / "reflected_box_corner" / f"seed{seed}"
    seconds = train("reflected_box_corner_likelihood.yaml", run, [f"run.seed={seed}"])
    m = _final_metrics(run)
    rows.append({"table": "box", "label": "reflected SDE, 100 steps (g² weighting)", "seed": seed,
                 "sliced_w2": m["sliced_w2"], "log_lik": m["log_likelihood"], "inside": 1.0, "seconds": seconds})
    rows += _trained_likelihood_rows(run, seed)
    return rows


def _trained_likelihood_rows(run: Path, seed: int) -> list:
    """The trained reflected model's NLL of 500 held-out points, plain (folded flow) and mollified, with the share of
    trajectories the fold caught (a folded flow map is many-to-one: its NLL is not that of a normalised density)."""
    from gendiv import load_pipeline
    from gendiv.objectives.reflected_likelihood import bits_per_dim, reflected_log_likelihood
    from gendiv.toy import get_distribution

    dist = get_distribution("box_corner")
    x = dist.sample(500, torch.Generator().manual_seed(3))
    denoiser = load_pipeline(str(run / "pipeline")).denoiser
    rows = []
    for label, sharpness in (("folded flow", None), ("mollified flow (sharpness 200)", 200.0)):
        log_p, folded = reflected_log_likelihood(denoiser, x, sigma_min=0.05, num_steps=50,
                                                 mollifier_sharpness=sharpness, return_folded=True)
        rows.append({"table": "likelihood", "label": f"reflected, trained, {label}", "seed": seed,
                     "nll": float(-log_p.mean()), "nll_true": float(-dist.log_prob(x, 0.05).mean()),
                     "bpd": float(bits_per_dim(log_p, 2).mean()), "folded": float(folded.double().mean())})
    return rows


def _exact_likelihood_rows() -> list:
    """The ODE with the exact score: its error against the closed-form log-density (no training, one 'seed')."""
    from gendiv.objectives.reflected_likelihood import reflected_log_likelihood
    from gendiv.reflection import fold
    from gendiv.toy import get_distribution

    rows = []
    for name in ("box_corner", "box_checkerboard"):
        dist = get_distribution(name)

        def exact(x, sigma, cond=None, dist=dist):
            score = torch.autograd.grad(dist.log_prob(x, sigma).sum(), x, create_graph=True)[0]
            return x + sigma[:, None] ** 2 * score

        g = torch.Generator().manual_seed(0)
        x = fold(dist.sample(64, g).double() + 0.05 * torch.randn(64, 2, generator=g, dtype=torch.float64))
        truth = dist.log_prob(x, 0.05)
        for steps in (10, 20, 50):
            ll = reflected_log_likelihood(exact, x, sigma_min=0.05, num_steps=steps)
            rows.append([f"exact score, {name}", steps, f"{float((ll - truth).abs().max()):.2g}",
                         f"{float(-truth.mean()):.4g}"])
    return rows


def run(args, bench) -> str:
    torch.set_num_threads(1)
    steps = args.objective_steps

    def train(config, run_dir, overrides):  # --reuse keeps runs of an earlier invocation (same steps and seeds)
        return bench._train_run(config, run_dir, [f"run.steps={steps}", f"run.checkpoint_every={steps}"] + overrides,
                                reuse=args.reuse)

    rows = []
    for seed in range(args.seeds):
        for part in (_robust_rows, _perturbation_rows, _mirror_rows):
            rows += part(bench, train, seed)
            print(f"  seed {seed}: {part.__name__} done", flush=True)
    (args.results_dir / "teacher_objectives.json").write_text(json.dumps(rows, indent=1))

    def grouped(table, keys):
        labels = list(dict.fromkeys(r["label"] for r in rows if r["table"] == table))
        return [[label] + [bench._mean_spread([r[k] for r in rows if r["table"] == table and r["label"] == label])
                           for k in keys] for label in labels]

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    w2_cols = [f"W₂, Euler {n} ↓" for n in EULER_STEPS]
    return (f"{steps} training steps per model (each objective's config, run.steps overridden), 2000 samples, "
            f"mean ± std over {args.seeds} seeds (run.seed 0..{args.seeds - 1}), 1 thread; {model}; {bench.machine()}"
            "\n\nRobustness: ring8 with 10% corrupted samples at (2.5, 2.5), scored against the clean ring "
            "(Heun, 35 NFE)\n\n"
            + bench.table(["objective", "sliced W₂ to the clean ring ↓", "share off the clean ring ↓", "train s"],
                          grouped("robust", ["sliced_w2_clean", "off_ring", "seconds"]))
            + "\n\nExposure bias: ring8_imbalanced, Euler sampling; gap = W₂(3 steps) − W₂(18 steps)\n\n"
            + bench.table(["objective", *w2_cols, "gap ↓", "train s"],
                          grouped("perturbation", [f"w2_{n}" for n in EULER_STEPS] + ["gap", "seconds"]))
            + "\n\nMirror flow matching (100 Euler steps), moments against the closed form\n\n"
            + bench.table(["model", "mean error ↓", "covariance error ↓", "inside the domain", "train s"],
                          grouped("mirror", ["mean_error", "cov_error", "inside", "seconds"]))
            + "\n\nbox_corner, where both apply\n\n"
            + bench.table(["model", "sliced W₂ ↓", "log-lik (σ=0.02) ↑", "inside the box", "train s"],
                          grouped("box", ["sliced_w2", "log_lik", "inside", "seconds"]))
            + "\n\nReflected likelihood through the probability-flow ODE (σ_min = 0.05): the trained model's NLL of "
            "500 held-out points next to the truth\n\n"
            + bench.table(["model", "NLL (nats)", "true NLL", "bits/dim", "trajectories folded"],
                          grouped("likelihood", ["nll", "nll_true", "bpd", "folded"]))
            + "\n\nA folded trajectory crossed a wall: the flow map is then many-to-one and the folded NLL is not that "
            "of a normalised density (it can fall below the truth); the mollified flow is a bijection of the box."
            + "\n\nThe ODE with the exact score of the box mixture, 64 points: largest |log p_ODE − log p_true|\n\n"
            + bench.table(["score", "RK4 steps", "max error", "true NLL"], _exact_likelihood_rows()))
