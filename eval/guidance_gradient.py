"""Benchmark ``guidance_gradient``: classifier guidance and training-free guidance (DPS, FreeDoM, MPGD, TFG) toward a
target class, from a model that never saw labels.

* exact suite (conditional2d): the exact marginal denoiser of p(x), guided by the exact classifier p(c | x_σ)
  (classifier guidance) or by the exact classifier of clean data at σ = 0.05 (training-free); target accuracy by the
  Bayes classifier, and sliced W₂ per class to exact samples of p(x | c) (the exact conditional sampler is the floor:
  the same Euler grid and sample size);
* digits (scikit-learn's 8×8, 64-D in [−1, 1]): an unconditional MLP denoiser and a noise-conditional classifier,
  both trained here per seed; target accuracy by an independent logistic regression on clean digits (its held-out
  accuracy in the header), and the Fréchet distance in pixel space to the real digits.

TFG's strengths come from its beam search (eval/tfg_search.py) on a separate validation seed. Euler, 18 steps
(FreeDoM and TFG with recurrence 2 repeat each step); mean ± std over ``--seeds``.
"""
from __future__ import annotations

import statistics
import time

import torch

STEPS, RECURRENCE = 18, 2
EXACT_SPACE = {"variance_scale": (0.25, 2.0, 4.0), "mean_scale": (0.001, 4.0, 0.064), "smoothing": (0.01, 10.0, 1.0)}
DIGITS_SPACE = {"variance_scale": (0.25, 2.0, 8.0), "mean_scale": (0.001, 4.0, 0.064), "smoothing": (0.01, 10.0, 1.0)}


def methods(base, classifier, log_likelihood, tfg: dict):
    """(row label, guided denoiser, recurrence) for every guider of the table."""
    from gendiv.guidance import ClassifierGuidedDenoiser, TrainingFreeGuidedDenoiser as TFG

    return [("unguided", TFG(base, log_likelihood, guidance_scale=0.0), 1),
            ("classifier guidance, s = 1", ClassifierGuidedDenoiser(base, classifier, 1.0), 1),
            ("classifier guidance, s = 2", ClassifierGuidedDenoiser(base, classifier, 2.0), 1),
            ("DPS (ρ = 1)", TFG.dps(base, log_likelihood, 1.0), 1),
            (f"FreeDoM (ρ = 1, recurrence {RECURRENCE})", TFG.freedom(base, log_likelihood, 1.0, RECURRENCE), RECURRENCE),
            ("MPGD (μ = 0.016)", TFG.mpgd(base, log_likelihood, 0.016), 1),
            (f"TFG, searched, recurrence {RECURRENCE}", TFG(base, log_likelihood, recurrence=RECURRENCE, **tfg),
             RECURRENCE)]


def draw(denoiser, shape, cond, seed: int):
    from gendiv.guidance import sample_time_travel
    from gendiv.space import karras_sigmas

    sigmas = karras_sigmas(STEPS, 0.002, 80.0)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    return sample_time_travel(denoiser, z, sigmas, cond, generator=torch.Generator().manual_seed(seed + 1))


def search_tfg(base, log_likelihood, space: dict, score, shape, labels, seed: int, bench) -> dict:
    """TFG's beam search on a validation draw (seed disjoint from the reported ones)."""
    from gendiv.condition import Condition
    from gendiv.guidance import TrainingFreeGuidedDenoiser

    cond = Condition(class_labels=labels)

    def evaluate(settings):
        guider = TrainingFreeGuidedDenoiser(base, log_likelihood, recurrence=RECURRENCE, **settings)
        return score(draw(guider, shape, cond, seed), labels)

    search = bench.eval_module("tfg_search")
    best, _ = search.beam_search(evaluate, {k: search.SearchedParameter(*v) for k, v in space.items()}, rounds=3)[0]
    return best


def exact_suite(seeds: int, bench) -> str:
    from gendiv.condition import Condition
    from gendiv.guidance import ClassifierLogLikelihood
    from gendiv.toy import AnalyticClassifier, AnalyticDenoiser, GaussianMixture, get_distribution, sliced_wasserstein2

    dist, n = get_distribution("conditional2d"), 1000
    classifier = AnalyticClassifier(dist)
    marginal = AnalyticDenoiser(GaussianMixture(dist.means, dist.variances, dist.weights))  # p(x): no labels seen
    log_likelihood = ClassifierLogLikelihood(classifier, sigma=0.05)

    def per_class_w2(x, labels, seed):
        ref = dist.sample(len(labels), torch.Generator().manual_seed(seed), class_labels=labels)
        return statistics.fmean(sliced_wasserstein2(x[labels == c], ref[labels == c]) for c in range(dist.num_classes))

    val_labels = dist.sample_labels(400, torch.Generator().manual_seed(999))
    tfg = search_tfg(marginal, log_likelihood, EXACT_SPACE, lambda x, y: -per_class_w2(x, y, 998), (400, 2),
                     val_labels, 997, bench)
    rows: dict = {}
    for seed in range(seeds):
        labels = dist.sample_labels(n, torch.Generator().manual_seed(seed))
        cond = Condition(class_labels=labels)
        reference = [("exact conditional sampler (floor)", AnalyticDenoiser(dist), 1)]
        for label, den, r in reference + methods(marginal, classifier, log_likelihood, tfg):
            x = draw(den, (n, 2), cond, 100 + seed)
            acc = float((classifier(x, 0.002).argmax(1) == labels).double().mean())
            row = rows.setdefault(label, {"acc": [], "w2": [], "nfe": STEPS * r})
            row["acc"].append(acc)
            row["w2"].append(per_class_w2(x, labels, 200 + seed))
    body = [[label, r["nfe"], bench._mean_spread(r["acc"]), bench._mean_spread(r["w2"])] for label, r in rows.items()]
    return (f"**Exact suite** (conditional2d, {n} samples per seed; TFG searched: "
            + ", ".join(f"{k} = {v:g}" for k, v in tfg.items()) + ")\n\n"
            + bench.table(["guidance from p(x) toward class c", "denoiser calls", "target accuracy (Bayes)",
                           "sliced W₂ to exact p(x∣c), per class"], body))


def digits_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 8 - 1, torch.tensor(digits.target)


def train_digits_models(x, y, seed: int, steps: int):
    """An unconditional MLP denoiser and a noise-conditional classifier (EDM's lognormal σ), Adam, batch 256."""
    from gendiv import MLPDenoiser
    from gendiv.guidance import NoiseConditionalClassifier, classifier_loss
    from gendiv.objectives import denoising_loss

    torch.manual_seed(seed)
    den = MLPDenoiser(dim=64, hidden=256, depth=3)
    clf = NoiseConditionalClassifier(input_shape=[64], num_classes=10, hidden=256, depth=2)
    g = torch.Generator().manual_seed(seed)
    for net, loss_fn, n_steps in ((den, lambda i: denoising_loss(den, x[i], None, generator=g), steps),
                                  (clf, lambda i: classifier_loss(clf, x[i], y[i], generator=g), steps // 2)):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(n_steps):
            loss = loss_fn(torch.randint(0, len(x), (256,), generator=g))
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval().requires_grad_(False)
    return den, clf


def digits(seeds: int, steps: int, bench) -> str:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from gendiv.condition import Condition
    from gendiv.guidance import ClassifierLogLikelihood
    from gendiv.metrics.frechet import FeatureStats, frechet_distance

    x, y = digits_data()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    judge = LogisticRegression(max_iter=3000).fit(x[perm[:1400]].numpy(), y[perm[:1400]].numpy())
    judge_acc = judge.score(x[perm[1400:]].numpy(), y[perm[1400:]].numpy())
    real = FeatureStats.from_features(x.numpy().astype(np.float64))
    n = 500
    rows: dict = {}
    tfg_settings = []

    def accuracy(s, labels):
        return float((torch.as_tensor(judge.predict(s.numpy())) == labels).double().mean())

    for seed in range(seeds):
        den, clf = train_digits_models(x, y, seed, steps)
        log_likelihood = ClassifierLogLikelihood(clf, sigma=0.05)
        val_labels = torch.arange(200) % 10
        tfg = search_tfg(den, log_likelihood, DIGITS_SPACE, accuracy, (200, 64), val_labels, 900 + seed, bench)
        tfg_settings.append(tfg)
        labels = torch.arange(n) % 10
        cond = Condition(class_labels=labels)
        for label, guided, r in methods(den, clf, log_likelihood, tfg):
            t = time.time()
            s = draw(guided, (n, 64), cond, 100 + seed).clamp(-1, 1)
            row = rows.setdefault(label, {"acc": [], "fd": [], "time": [], "nfe": STEPS * r})
            row["time"].append(time.time() - t)
            row["acc"].append(accuracy(s, labels))
            row["fd"].append(frechet_distance(real, FeatureStats.from_features(s.numpy().astype(np.float64))))
    body = [[label, r["nfe"], bench._mean_spread(r["acc"]), bench._mean_spread(r["fd"]),
             f"{statistics.fmean(r['time']):.1f}"] for label, r in rows.items()]
    searched = "; ".join(", ".join(f"{k} = {v:g}" for k, v in t.items()) for t in tfg_settings)
    return (f"**Digits** (8×8, {n} samples per seed, 50 per class; models trained {steps} steps (denoiser) and "
            f"{steps // 2} (classifier) per seed; judge: logistic regression, held-out accuracy {judge_acc:.3f}; "
            f"TFG searched per seed: {searched})\n\n"
            + bench.table(["guidance toward class c", "denoiser calls", "target accuracy (judge)",
                           "FD to real digits (pixels)", "sampling s"], body))


def run(args, bench) -> str:
    header = (f"Guidance toward a class from a model trained without labels; Euler {STEPS} steps, mean ± std over "
              f"{args.seeds} seeds, {bench.machine()}")
    return "\n\n".join([header, exact_suite(args.seeds, bench), digits(args.seeds, args.guidance_steps, bench)])
