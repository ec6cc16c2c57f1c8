"""TFG's hyper-parameter search (Ye et al. 2024, "TFG: Unified Training-Free Guidance", its beam search): start every
searched parameter at a small value, and each round multiply one parameter of each of the ``topk`` best settings so
far by its factor (capped at its maximum), evaluate the new settings on a small batch, keep the best.

    python eval/tfg_search.py   # variance_scale, mean_scale, smoothing on the exact 2-D suite: the marginal model
                                # guided by the exact clean classifier, scored by −sliced W₂ to exact p(x | c) samples

``beam_search`` is generic: ``evaluate(settings) -> score`` (higher is better) on whatever guider and metric the caller
uses; eval/guidance_gradient.py uses it to set TFG on digits from a validation seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SearchedParameter:
    init: float
    factor: float
    max: float

    def __post_init__(self):
        if not (self.init > 0 and self.factor > 1 and self.max >= self.init):
            raise ValueError(f"a searched parameter needs init > 0, factor > 1, max ≥ init; got {self}")


# the defaults of TFG's search script for its three strengths (ρ, μ, γ)
TFG_SPACE = {"variance_scale": SearchedParameter(0.25, 2.0, 8.0), "mean_scale": SearchedParameter(0.25, 2.0, 8.0),
             "smoothing": SearchedParameter(0.001, 10.0, 1.0)}


def _neighbours(settings: dict, space: dict) -> list[dict]:
    out = []
    for name, p in space.items():
        value = min(settings[name] * p.factor, p.max)
        if not math.isclose(value, settings[name]):
            out.append({**settings, name: value})
    return out


def beam_search(evaluate, space: dict, topk: int = 2, rounds: int = 4,
                fixed: dict | None = None) -> list[tuple[dict, float]]:
    """All evaluated (settings, score), best first. ``fixed``: settings passed unchanged to every evaluation."""
    if topk < 1 or rounds < 1:
        raise ValueError(f"beam_search needs topk ≥ 1 and rounds ≥ 1, got topk={topk}, rounds={rounds}")
    key = lambda s: tuple(sorted(s.items()))  # noqa: E731
    results: dict = {}
    start = {name: p.init for name, p in space.items()}
    frontier = [start, *_neighbours(start, space)]
    for _ in range(rounds):
        for settings in frontier:
            if key(settings) not in results:
                results[key(settings)] = (settings, float(evaluate({**(fixed or {}), **settings})))
        ranked = sorted(results.values(), key=lambda r: r[1], reverse=True)
        frontier = [n for s, _ in ranked[:topk] for n in _neighbours(s, space) if key(n) not in results]
        if not frontier:
            break
    return sorted(results.values(), key=lambda r: r[1], reverse=True)


def main():
    import torch

    from gendiv.condition import Condition
    from gendiv.guidance import ClassifierLogLikelihood, TrainingFreeGuidedDenoiser, sample_time_travel
    from gendiv.space import karras_sigmas
    from gendiv.toy import AnalyticClassifier, AnalyticDenoiser, GaussianMixture, get_distribution, sliced_wasserstein2

    dist = get_distribution("conditional2d")
    classifier = AnalyticClassifier(dist)
    marginal = AnalyticDenoiser(GaussianMixture(dist.means, dist.variances, dist.weights))  # p(x): no classes
    labels = dist.sample_labels(400, torch.Generator().manual_seed(0))
    cond = Condition(class_labels=labels)
    sigmas = karras_sigmas(12, 0.002, 80.0)
    z = torch.randn(400, 2, generator=torch.Generator().manual_seed(1)) * sigmas[0]

    target = dist.sample(400, torch.Generator().manual_seed(3), class_labels=labels)

    def closeness(settings):
        guider = TrainingFreeGuidedDenoiser(marginal, ClassifierLogLikelihood(classifier, sigma=0.05), **settings)
        x = sample_time_travel(guider, z, sigmas, cond, generator=torch.Generator().manual_seed(2))
        return -sliced_wasserstein2(x, target)

    for settings, score in beam_search(closeness, TFG_SPACE, rounds=3)[:5]:
        print(f"sliced W2 {-score:.4f}  {settings}")


if __name__ == "__main__":
    main()
