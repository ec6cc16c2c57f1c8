"""Gradient guidance (issue 24): classifier guidance against the exact class-conditional mixture (float64), TFG's
variance and mean guidance against finite differences through the denoiser, its implicit dynamics against a closed
form, the time-travel sampler, a noise-conditional classifier trained by gendiv, and their place in pipelines."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from gendiv import GenDivPipeline, MLPDenoiser
from gendiv.condition import Condition
from gendiv.guidance import (ClassifierGuidedDenoiser, ClassifierLogLikelihood, NoiseConditionalClassifier,
                             TrainingFreeGuidedDenoiser, classifier_loss, sample_time_travel)
from gendiv.sampling import sample_euler
from gendiv.space import karras_sigmas
from gendiv.toy import AnalyticClassifier, AnalyticDenoiser, get_distribution, sliced_wasserstein2

DIST = get_distribution("conditional2d")
EXACT = AnalyticDenoiser(DIST)
CLASSIFIER = AnalyticClassifier(DIST)


def eval_module(name: str):
    """eval/<name>.py (eval/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "eval" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noised_batch(n=128, sigma=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = DIST.sample_labels(n, g)
    x = DIST.sample(n, g, class_labels=labels).double() + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, torch.full((n,), sigma, dtype=torch.float64), Condition(class_labels=labels)


def central_difference(fn, x, eps=1e-5):
    """∇_x Σ_batch fn(x) by central differences, coordinate by coordinate (float64)."""
    grad = torch.zeros_like(x)
    for j in range(x.shape[1]):
        step = torch.zeros_like(x)
        step[:, j] = eps
        grad[:, j] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


# ------------------------------------------------------------------------------------------------------------
# classifier guidance
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.02, 0.3, 2.0, 20.0])
def test_classifier_guidance_with_the_exact_classifier_is_the_exact_conditional_denoiser(sigma):
    """D(x|∅) + σ²∇log p(c|x_σ) = D(x|c) (Bayes + Tweedie), with an unconditional and a null-class base alike."""
    x, sig, cond = noised_batch(sigma=sigma)
    want = EXACT(x, sig, cond)
    torch.testing.assert_close(ClassifierGuidedDenoiser(EXACT, CLASSIFIER)(x, sig, cond), want, atol=1e-10, rtol=1e-10)
    marginal_only = AnalyticDenoiser(get_distribution("conditional2d"))
    marginal_only.distribution.component_class = None  # the same mixture without classes: an unconditional model
    marginal_only.distribution.num_classes = None
    torch.testing.assert_close(ClassifierGuidedDenoiser(marginal_only, CLASSIFIER)(x, sig, cond), want,
                               atol=1e-10, rtol=1e-10)


def test_classifier_guidance_scale_is_the_tilted_score():
    """(D_s − x)/σ² = ∇log p(x) + s·∇log p(c|x): s = 0 the unconditional model, s = 2 twice the classifier term."""
    x, sig, cond = noised_batch(sigma=0.5)
    uncond, cond_d = EXACT(x, sig, cond.with_null()), EXACT(x, sig, cond)
    for s in (0.0, 2.0):
        torch.testing.assert_close(ClassifierGuidedDenoiser(EXACT, CLASSIFIER, s)(x, sig, cond),
                                   uncond + s * (cond_d - uncond), atol=1e-10, rtol=1e-10)


def test_noise_conditional_classifier_trained_by_gendiv_guides_toward_its_class(tmp_path):
    torch.manual_seed(0)
    clf = NoiseConditionalClassifier(input_shape=[2], num_classes=4, hidden=64)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        labels = DIST.sample_labels(256, g)
        loss = classifier_loss(clf, DIST.sample(256, g, class_labels=labels), labels, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, sig, cond = noised_batch(n=2000, sigma=0.3, seed=5)
    with torch.no_grad():
        accuracy = (clf(x.float(), sig.float()).argmax(1) == CLASSIFIER(x, sig).argmax(1)).double().mean()
    assert accuracy > 0.95  # agrees with the Bayes classifier at σ = 0.3
    clf.save_pretrained(tmp_path)
    loaded = NoiseConditionalClassifier.from_pretrained(tmp_path)
    guided = ClassifierGuidedDenoiser(EXACT, loaded)(x.float(), sig.float(), cond).double()
    err_guided = (guided - EXACT(x, sig, cond)).norm(dim=1).mean()
    err_unguided = (EXACT(x, sig, cond.with_null()) - EXACT(x, sig, cond)).norm(dim=1).mean()
    assert err_guided < 0.5 * err_unguided  # most of the way from p(x) to p(x|c)


# ------------------------------------------------------------------------------------------------------------
# training-free guidance (TFG design space)
# ------------------------------------------------------------------------------------------------------------
def clean_log_likelihood(x0, cond):
    """log p(c | x₀) of the mixture at a small σ (a smooth classifier of clean data)."""
    return CLASSIFIER(x0, 0.05).gather(1, cond.class_labels[:, None])[:, 0]


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_variance_guidance_is_the_gradient_through_the_denoiser(sigma):
    """D_g − D = ρσ²·∇_x log f(c | D(x, σ)), the gradient checked by central differences through the exact denoiser."""
    x, sig, cond = noised_batch(n=16, sigma=sigma)
    guided = TrainingFreeGuidedDenoiser.dps(EXACT, clean_log_likelihood, variance_scale=0.7)(x, sig, cond)
    fd = central_difference(lambda v: clean_log_likelihood(EXACT(v, sig, cond), cond), x)
    torch.testing.assert_close((guided - EXACT(x, sig, cond)) / (0.7 * sigma**2), fd, atol=1e-5, rtol=1e-5)


def test_mean_guidance_ascends_the_clean_estimate_without_the_denoisers_gradient():
    """mean_steps = 2: x̂₀ ← x̂₀ + μ∇log f(x̂₀) twice, each gradient by central differences on x̂₀."""
    x, sig, cond = noised_batch(n=16, sigma=0.4)
    mu = 0.01
    guided = TrainingFreeGuidedDenoiser(EXACT, clean_log_likelihood, mean_scale=mu, mean_steps=2)(x, sig, cond)
    x0 = EXACT(x, sig, cond)
    for _ in range(2):
        x0 = x0 + mu * central_difference(lambda v: clean_log_likelihood(v, cond), x0)
    torch.testing.assert_close(guided, x0, atol=1e-8, rtol=1e-7)
    both = TrainingFreeGuidedDenoiser(EXACT, clean_log_likelihood, variance_scale=0.5, mean_scale=mu, mean_steps=2,
                                      guidance_scale=1.5)(x, sig, cond)
    variance = TrainingFreeGuidedDenoiser.dps(EXACT, clean_log_likelihood, 0.5)(x, sig, cond) - EXACT(x, sig, cond)
    torch.testing.assert_close(both, EXACT(x, sig, cond) + 1.5 * (variance + x0 - EXACT(x, sig, cond)))


def test_implicit_dynamics_smooths_the_guide_by_gaussian_perturbation():
    """With f = N(y; x₀, τ²) the smoothed guide is N(y; x₀, τ² + γ_σ²): its gradient (y − x₀)/(τ² + γ_σ²), γ_σ =
    γσ/√(1+σ²), reached by the Monte-Carlo log-mean-exp (16,384 draws) to within 2%."""
    tau, gamma, sigma = 0.5, 0.6, 1.0
    target = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    gaussian = lambda x0, cond: -((x0 - target) ** 2).sum(1) / (2 * tau**2)  # noqa: E731
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sig = torch.full((8,), sigma, dtype=torch.float64)
    tfg = TrainingFreeGuidedDenoiser(EXACT, gaussian, mean_scale=1e-3, smoothing=gamma, smoothing_samples=16384, seed=3)
    x0 = EXACT(x, sig)
    gamma_sigma2 = gamma**2 * sigma**2 / (1 + sigma**2)
    term = (tfg(x, sig) - x0) / 1e-3
    want = (target - x0) / (tau**2 + gamma_sigma2)
    torch.testing.assert_close(term, want, atol=0.02 * float(want.abs().max()), rtol=0)
    assert not torch.allclose(term, (target - x0) / tau**2, rtol=0.1)  # the unsmoothed gradient is 36% larger


def test_time_travel_sampler():
    """recurrence = 1 is plain Euler; with the exact denoiser, time travel keeps the samples on the data
    distribution (each re-noising restores the marginal at σ_i)."""
    sigmas = karras_sigmas(12, 0.002, 80.0).double()
    z = torch.randn(1500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    cond = Condition(class_labels=DIST.sample_labels(1500, torch.Generator().manual_seed(1)))
    torch.testing.assert_close(sample_time_travel(EXACT, z, sigmas, cond), sample_euler(EXACT, z, sigmas, cond))
    travelled = sample_time_travel(EXACT, z, sigmas, cond, recurrence=3, generator=torch.Generator().manual_seed(2))
    ref = DIST.sample(1500, torch.Generator().manual_seed(3), class_labels=cond.class_labels)
    assert sliced_wasserstein2(travelled.float(), ref) < 0.05
    freedom = TrainingFreeGuidedDenoiser.freedom(EXACT, clean_log_likelihood, recurrence=3)
    calls = []
    sample_time_travel(freedom, z[:4], sigmas, cond.index(slice(0, 4)), generator=torch.Generator().manual_seed(0),
                       callback=calls.append)
    assert len(calls) == 3 * (len(sigmas) - 1)  # its own recurrence


def test_training_free_guidance_in_a_pipeline_and_its_bad_input():
    torch.manual_seed(0)
    den = MLPDenoiser(dim=2, hidden=32, depth=1, num_classes=4)  # pipelines take labels for conditional models only
    pipe = GenDivPipeline.from_denoiser(den)
    pipe.set_progress_bar_config(disable=True)
    loglik = ClassifierLogLikelihood(CLASSIFIER, sigma=0.05)
    labels = [0, 1, 2, 3]
    run = lambda g: pipe(batch_size=4, class_labels=labels, num_inference_steps=4, output_type="pt",  # noqa: E731
                         generator=torch.Generator().manual_seed(0), guider=g).images
    guided = run(TrainingFreeGuidedDenoiser.dps(den, loglik, variance_scale=2.0))  # inside the pipeline's no_grad
    assert torch.isfinite(guided).all() and not torch.allclose(guided, run(None))
    unconditional = GenDivPipeline.from_denoiser(MLPDenoiser(dim=2, hidden=32, depth=1))  # labels: the guide's only
    unconditional.set_progress_bar_config(disable=True)
    toward = unconditional(batch_size=4, class_labels=labels, num_inference_steps=4, output_type="pt",
                           guider=ClassifierGuidedDenoiser(unconditional.denoiser, CLASSIFIER, 2.0)).images
    assert torch.isfinite(toward).all()
    with pytest.raises(ValueError, match="class_labels given but the model is unconditional"):
        unconditional(batch_size=4, class_labels=labels, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"recurrence=2\) re-noises and repeats each step \(time travel\), which a "
                                         "scheduler's step cannot do"):
        run(TrainingFreeGuidedDenoiser.freedom(den, loglik, recurrence=2))
    with pytest.raises(ValueError, match="recurrence must be a positive integer"):
        TrainingFreeGuidedDenoiser(den, loglik, recurrence=0)
    with pytest.raises(ValueError, match="log_likelihood must be callable"):
        TrainingFreeGuidedDenoiser(den, "classifier")
    with pytest.raises(ValueError, match="classifier guidance needs class labels"):
        ClassifierGuidedDenoiser(EXACT, CLASSIFIER)(torch.zeros(2, 2), 1.0)
    with pytest.raises(ValueError, match="NoiseConditionalClassifier expects inputs \\[B, 2\\], got \\(3, 5\\)"):
        NoiseConditionalClassifier(input_shape=[2], num_classes=3)(torch.zeros(3, 5), 1.0)


def test_tfg_beam_search_climbs_to_the_best_setting_of_its_grid():
    """eval/tfg_search.py on a score peaked at (ρ, μ) = (2, 0.5): the search reaches the peak from (0.25, 0.25) by
    doubling, never leaves the caps, and evaluates each setting once."""
    search = eval_module("tfg_search")
    calls = []

    def score(settings):
        calls.append(settings)
        return -abs(math.log2(settings["rho"] / 2)) - abs(math.log2(settings["mu"] / 0.5))

    space = {"rho": search.SearchedParameter(0.25, 2.0, 4.0), "mu": search.SearchedParameter(0.25, 2.0, 1.0)}
    results = search.beam_search(score, space, topk=2, rounds=6, fixed={"recurrence": 2})
    assert results[0][0] == {"rho": 2.0, "mu": 0.5} and results[0][1] == 0
    assert all(c["recurrence"] == 2 and c["rho"] <= 4 and c["mu"] <= 1 for c in calls)
    assert len({tuple(sorted(c.items())) for c in calls}) == len(calls)
    with pytest.raises(ValueError, match="needs init > 0, factor > 1"):
        search.SearchedParameter(0.0, 2.0, 1.0)
