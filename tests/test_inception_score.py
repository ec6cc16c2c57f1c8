"""Inception Score and IS∞ against closed forms (classifiers whose outputs are known), against torch-fidelity's own
implementation on the same logits, and the classifier read from Inception weights that hold one."""
import json
import os

import numpy as np
import pytest
import torch

from gendiv.metrics import InceptionFeatures, WeightsError, evaluate, inception_score, is_infinity
from gendiv.metrics import inception as inc


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    old = os.environ.get("GENDIV_CACHE")
    os.environ["GENDIV_CACHE"] = str(tmp_path_factory.mktemp("gendiv_cache"))
    yield
    if old is None:
        os.environ.pop("GENDIV_CACHE")
    else:
        os.environ["GENDIV_CACHE"] = old


def _soft_one_hot_logits(labels: np.ndarray, classes: int, eps: float) -> np.ndarray:
    """log p(y|x) of a classifier that puts 1 − ε + ε/K on the sample's class and ε/K on every other."""
    probs = np.full((len(labels), classes), eps / classes)
    probs[np.arange(len(labels)), labels] += 1 - eps
    return np.log(probs)


def _closed_form(marginal: np.ndarray, classes: int, eps: float) -> float:
    """IS = exp(H(p(y)) − H(p(y|x))): every p(y|x) has the same entropy here."""
    top, rest = 1 - eps + eps / classes, eps / classes
    h_conditional = -(top * np.log(top) + (classes - 1) * rest * np.log(rest))
    return float(np.exp(-(marginal * np.log(marginal)).sum() - h_conditional))


@pytest.mark.parametrize("eps", [0.0001, 0.3, 1.0])
def test_inception_score_of_a_known_classifier_equals_the_closed_form(eps):
    """Balanced classes in every split: p̂(y) is exactly uniform, so each split's IS is the closed form (K for a
    confident classifier, 1 for one that says nothing) and the spread over splits is zero."""
    classes = 10
    logits = _soft_one_hot_logits(np.arange(1000) % classes, classes, eps)
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(_closed_form(np.full(classes, 1 / classes), classes, eps), rel=1e-10)
    assert std < 1e-10
    assert inception_score(logits + 3.7, splits=10)[0] == pytest.approx(mean, rel=1e-12)  # logits, not probabilities


def test_inception_score_equals_torch_fidelity_on_the_same_logits():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(0).normal(0, 3, size=(1003, 1008))  # 1003: splits of unequal size
    want = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(want["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(want["inception_score_std"], rel=1e-8)


def test_is_infinity_removes_the_finite_sample_bias_of_an_imbalanced_classifier():
    """Labels drawn from a known skewed π: the population IS is the closed form at p(y) = (1 − ε)π + ε/K. IS of 100
    samples is biased low (p̂(y) from the same samples has too little entropy, slope < 0); the 1/N fit lands on the
    closed form (within 3% here; 1.6% at worst over 20 seeds while IS_100 was 13–19% off)."""
    classes, eps = 50, 0.2
    pi = np.random.default_rng(123).dirichlet(np.ones(classes) * 2)
    labels = np.random.default_rng(0).choice(classes, 4000, p=pi)
    truth = _closed_form((1 - eps) * pi + eps / classes, classes, eps)
    value, slope, points = is_infinity(_soft_one_hot_logits(labels, classes, eps), n_min=100, seed=0)
    assert abs(value - truth) < 0.03 * truth
    assert points[0][0] == 100 and abs(points[0][1] - truth) > 0.08 * truth
    assert slope < 0
    with pytest.raises(ValueError, match="IS∞ needs at least n_min=5000"):
        is_infinity(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="splits must be between 1 and the number of samples"):
        inception_score(np.zeros((5, 3)), splits=6)
    with pytest.raises(ValueError, match="at least 2 classes"):
        inception_score(np.zeros(5))


@pytest.fixture(scope="module")
def classifier_weights(tmp_path_factory):
    """The FID Inception in torch-fidelity's layout with a known (random, seeded) classifier, as a user's own file."""
    path, _ = inc.converted_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(state["fc.weight"].shape, generator=g) * 0.05
    state["fc.bias"] = torch.randn(state["fc.bias"].shape, generator=g)
    out = tmp_path_factory.mktemp("weights") / "inception_with_classifier.pth"
    torch.save(state, out)
    return out


def test_logits_are_torch_fidelitys_unbiased_logits_and_pool3_only_weights_are_refused(classifier_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ours = InceptionFeatures(classifier_weights)
    assert ours.has_classifier and not InceptionFeatures().has_classifier
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(1)) * 255
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(classifier_weights)).eval()
    with torch.no_grad():
        pool3, logits = theirs(x.round().to(torch.uint8))  # torch-fidelity takes uint8 images
    feats = ours(x.round()).double().numpy()
    np.testing.assert_allclose(feats, pool3.double().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.logits(feats), logits.double().numpy(), rtol=1e-4, atol=1e-3)
    with pytest.raises(WeightsError, match="needs the Inception classifier.*--inception-weights"):
        InceptionFeatures().logits(feats)


def test_gendiv_fid_reports_inception_score_with_classifier_weights(classifier_weights, tmp_path, capsys):
    from gendiv.cli import main
    from gendiv.metrics.images import dataset_images

    images = np.stack(dataset_images("digits")[100:120])  # not the reference's 20
    np.savez(tmp_path / "gen.npz", images=images)
    result = evaluate(str(tmp_path / "gen.npz"), "dataset:digits", num_ref=20, weights=classifier_weights,
                      with_is=True, progress=False)
    assert result["is_mean"] >= 1 and result["is_std"] >= 0 and result["fid"] > 0
    with pytest.raises(SystemExit) as stop:  # the default weights: one line naming the fix, before any features
        main(["fid", str(tmp_path / "gen.npz"), "dataset:digits", "--inception-score"])
    assert stop.value.code == 2
    assert "--inception-weights" in capsys.readouterr().err
    main(["fid", str(tmp_path / "gen.npz"), "dataset:digits", "--num-ref", "20", "--inception-score",
          "--inception-weights", str(classifier_weights), "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["is_mean"] == pytest.approx(result["is_mean"], rel=1e-9)
