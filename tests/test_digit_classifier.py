"""The digit classifier behind the MNIST study's Inception Score (gendiv/metrics/digit_classifier.py,
eval/mnist_study.py): it learns digits, round-trips through diffusers' loader, and its IS tells confident,
class-balanced samples from dropped classes."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gendiv.metrics.digit_classifier import DigitClassifier, classifier_logits, train_digit_classifier

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("GENDIV_MNIST_RUNS", str(tmp_path_factory.mktemp("bench_mnist")))
    spec = importlib.util.spec_from_file_location("mnist_study_digit_is", ROOT / "eval" / "mnist_study.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _sklearn_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.images[:, None] / 8.0 - 1).float(), torch.from_numpy(d.target).long()


def test_it_learns_digits_it_has_not_seen():
    x, y = _sklearn_digits()
    model = train_digit_classifier(x[:1300], y[:1300], steps=300, batch_size=64, max_shift=0)
    accuracy = (classifier_logits(model, x[1300:]).argmax(1) == y[1300:].numpy()).mean()
    assert accuracy > 0.9
    untrained = classifier_logits(DigitClassifier(), x[1300:]).argmax(1) == y[1300:].numpy()
    assert untrained.mean() < 0.3  # the accuracy is learnt, not a property of the architecture


def test_saved_classifier_loads_through_diffusers(tmp_path):
    model = DigitClassifier(channels=(8, 16, 32)).eval()
    model.save_pretrained(str(tmp_path))
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = DigitClassifier.from_pretrained(str(tmp_path)).eval()  # diffusers' ModelMixin loader
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(classifier_logits(loaded, x), classifier_logits(model, x))


def test_the_committed_classifier_reads_the_held_out_digits(study):
    record = json.loads((study.CLASSIFIER / "training.json").read_text())
    images, labels, perm = study._digit_split()
    held = perm[:study.HELD_OUT]
    scores = study.digit_scores(images[held], labels[held])
    assert scores["label_accuracy"] == pytest.approx(record["held_out_accuracy"], abs=0.003)  # round-off flips
    assert scores["label_accuracy"] > 0.95
    assert 8.0 < scores["is_inf"] <= 10.0 and 8.0 < scores["is"] <= 10.0  # confident and balanced: near K = 10


def test_its_score_sees_dropped_classes(study):
    """A 'generator' that draws only zeros whatever class it is asked for: IS near 1 (one class), a tenth of the
    samples recognised as their drawn class, where the real digits score near 10."""
    images, labels, perm = study._digit_split()
    zeros = perm[:study.HELD_OUT][labels[perm[:study.HELD_OUT]] == 0]
    scores = study.digit_scores(images[zeros.repeat(10)[:500]], study._drawn_labels(500))
    assert scores["is"] < 1.3 and scores["is_inf"] < 1.3
    assert scores["label_accuracy"] == pytest.approx(0.1, abs=0.02)
    halves = torch.cat([zeros, perm[:study.HELD_OUT][labels[perm[:study.HELD_OUT]] == 1]])
    two = study.digit_scores(images[halves[torch.randperm(len(halves), generator=torch.Generator().manual_seed(0))]],
                             labels[halves])
    assert two["is"] == pytest.approx(2.0, abs=0.25)  # two confident, balanced classes: IS → 2
    assert np.isfinite(two["is_std"])
