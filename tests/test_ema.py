"""EDM2's power-function EMA (gendiv/training/ema.py): its width against quadrature, its unrolled weights against the
closed form, and the trainer's EMA against the weighted average of the weights it saw, across a resume."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.integrate import quad

from gendiv.distill.contract import STUDENT
from gendiv.training import ConfigError, DistillConfig, DistillTrainer, distill, load_config
from gendiv.training.ema import EmaProfile, power_beta, power_exponent, relative_std

FAST = ["run.progress=false", "run.batch_size=32", "method.name=dmd", "method.fake_updates_per_generator_update=1",
        "method.fake_warmup_steps=2", "eval.num_samples=50", "eval.teacher_steps=3", "student.model.hidden=16",
        "student.model.depth=1"]


@pytest.mark.parametrize("std", [0.01, 0.05, 0.1, 0.2, 0.28])
def test_exponent_gives_the_asked_width_by_quadrature(std):
    gamma = power_exponent(std)
    density = lambda x: (gamma + 1) * x ** gamma  # noqa: E731 — the profile over relative time x = i/t
    assert quad(density, 0, 1)[0] == pytest.approx(1, abs=1e-9)
    mean = quad(lambda x: x * density(x), 0, 1)[0]
    var = quad(lambda x: (x - mean) ** 2 * density(x), 0, 1)[0]
    assert np.sqrt(var) == pytest.approx(std, rel=1e-7)
    assert relative_std(gamma) == pytest.approx(std, rel=1e-9)


def test_the_uniform_average_is_the_widest_and_wider_is_refused():
    assert power_exponent(12 ** -0.5) == pytest.approx(0, abs=1e-6)
    for bad in (0.0, -0.1, 0.3):
        with pytest.raises(ValueError, match="relative std"):
            power_exponent(bad)


def test_unrolled_updates_equal_the_discrete_power_weights():
    """e_t = β_t e_{t−1} + (1 − β_t) θ_t with β_t = (1 − 1/t)^(γ+1) is Σ wᵢθᵢ, wᵢ = (i^(γ+1) − (i−1)^(γ+1))/t^(γ+1)."""
    gamma, t = power_exponent(0.07), 300
    theta = np.random.default_rng(0).normal(size=(t, 5))
    ema = np.full(5, 123.0)  # the initial copy is forgotten at the first update (β₁ = 0)
    for i in range(1, t + 1):
        beta = power_beta(i, gamma)
        ema = beta * ema + (1 - beta) * theta[i - 1]
    i = np.arange(1, t + 1, dtype=np.float64)
    w = (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / t ** (gamma + 1)
    assert w.sum() == pytest.approx(1, abs=1e-12)
    np.testing.assert_allclose(ema, w @ theta, rtol=1e-10, atol=1e-12)
    # and those weights have the asked relative width once t is large
    big = np.arange(1, 200_001, dtype=np.float64)
    wb = np.diff(np.concatenate([[0.0], big ** (gamma + 1)])) / big[-1] ** (gamma + 1)
    x = big / big[-1]
    assert np.sqrt(wb @ (x - wb @ x) ** 2) == pytest.approx(0.07, rel=1e-3)


def test_a_constant_profile_keeps_its_decay():
    assert EmaProfile(0.99).beta(1) == EmaProfile(0.99).beta(10_000) == 0.99
    assert EmaProfile(0.99, std=0.1).beta(1) == 0.0  # the first update copies the weights


def _student_ema(out, step):
    return load_file(str(out / "checkpoints" / f"step-{step:08d}" / "ema_generator.safetensors"))


def test_trainer_ema_is_the_power_weighted_average_of_the_generator_it_saw(tmp_path):
    cfg = load_config(DistillConfig, None, [f"run.output_dir={tmp_path}", *FAST, "run.steps=9",
                                            "run.checkpoint_every=9", "optim.ema_std=0.15"])
    trainer = DistillTrainer(cfg)
    seen, original = [], trainer.update_ema

    def recording(name):
        seen.append({k: v.detach().double().clone() for k, v in trainer.nets[STUDENT].state_dict().items()})
        original(name)

    trainer.update_ema = recording
    trainer.fit()
    t, gamma = len(seen), power_exponent(0.15)
    assert t == 7  # 9 steps, 2 of fake-score warm-up
    i = np.arange(1, t + 1, dtype=np.float64)
    w = (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / t ** (gamma + 1)
    ema = _student_ema(tmp_path, 9)
    for key, value in seen[0].items():
        expected = sum(float(wi) * s[key] for wi, s in zip(w, seen))
        torch.testing.assert_close(ema[key].double(), expected, rtol=1e-5, atol=1e-6)


def test_power_ema_resumes_exactly(tmp_path):
    common = [*FAST, "run.steps=12", "run.checkpoint_every=4", "optim.ema_std=0.1"]
    distill(load_config(DistillConfig, None, [f"run.output_dir={tmp_path / 'a'}", *common]))
    b = [f"run.output_dir={tmp_path / 'b'}", *common]
    assert distill(load_config(DistillConfig, None, [*b, "run.stop_after=6"])) == {"stopped_at": 6}
    distill(load_config(DistillConfig, None, [*b, "run.resume=true"]))
    a_ema, b_ema = _student_ema(tmp_path / "a", 12), _student_ema(tmp_path / "b", 12)
    for key in a_ema:
        torch.testing.assert_close(b_ema[key], a_ema[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["0", "0.5", "-1"])
def test_out_of_range_widths_are_config_errors(tmp_path, value):
    with pytest.raises(ConfigError, match=r"optim.ema_std .*must be in \(0, 0.2887\]"):
        load_config(DistillConfig, None, [f"run.output_dir={tmp_path}", f"optim.ema_std={value}"])
