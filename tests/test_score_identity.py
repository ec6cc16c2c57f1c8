"""SiD, SiDA and Uni-Instruct against truths that cannot drift: finite differences of J_σ by quadrature for 1-D
Gaussians with exact denoisers and the exact log-ratio as the logit, the closed-form SiD derivatives, limits."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gendiv.distill import SiD, StepContext, UniInstruct, sid_per_sample
from gendiv.training import ConfigError, DistillConfig, distill, load_config

SIGMA = 0.6


def _log_normal(x, mean, var):
    return -0.5 * (math.log(2 * math.pi) + torch.log(torch.as_tensor(var, dtype=torch.float64)) + (x - mean) ** 2 / var)


def _j_quadrature(h, m, s, sigma=SIGMA):
    """J_σ = ∫ q_σ(x) h(r(x)) (s_p − s_q)² dx for p = N(0, 1), q = N(m, s²), on a fine grid."""
    x = torch.linspace(-30, 30, 200001, dtype=torch.float64)
    var_p, var_q = 1 + sigma**2, s**2 + sigma**2
    log_q, log_p = _log_normal(x, m, var_q), _log_normal(x, 0.0, var_p)
    score_diff = -x / var_p + (x - m) / var_q
    return float(torch.trapezoid(log_q.exp() * h(torch.exp(log_p - log_q)) * score_diff**2, x))


def _engine_gradient(method, m0, s0, sigma=SIGMA, nodes=100):
    """∂/∂(m, s) of the method's per-sample loss, averaged with Gauss–Hermite weights over (z, n):
    x = m + s z, x_σ = x + σ n, exact teacher/fake denoisers (fake frozen at the current m, s), logit = log r."""
    m = torch.tensor(m0, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
    z1, w1 = np.polynomial.hermite_e.hermegauss(nodes)
    z, n = (torch.tensor(a).flatten() for a in np.meshgrid(z1, z1, indexing="ij"))
    w = torch.tensor(np.outer(w1, w1) / (2 * math.pi)).flatten()
    x = (m + s * z)[:, None]
    x_sigma = x + sigma * n[:, None]
    var_p, var_q = 1 + sigma**2, s0**2 + sigma**2
    d_teacher = x_sigma / var_p                                   # E[x₀ | x_σ] for N(0, 1)
    d_fake = m0 + s0**2 / var_q * (x_sigma - m0)                  # for q, parameters frozen
    log_r = (_log_normal(x_sigma, 0.0, var_p) - _log_normal(x_sigma, m0, var_q)).flatten().detach()
    ctx = StepContext(x=x, sigma=torch.full((len(x),), sigma, dtype=torch.float64), x_sigma=x_sigma, cond=None,
                      d_teacher=d_teacher, d_fake=d_fake, logits=log_r)
    per_sample = method.per_sample_loss(ctx, 0, {})
    return torch.stack(torch.autograd.grad((w * per_sample).sum(), [m, s]))


def _exact(divergence, **kw):
    # r stays in (0, 3) here: no clamping
    return UniInstruct(divergence=divergence, weighting="exact", normalize_weights=False,
                       ratio=dict(sigma_bins=0, logit_clamp=60.0, ratio_min=0.0, ratio_max=1e4), **kw)


def _fd(h, m0, s0, eps=1e-4):
    return torch.tensor([(_j_quadrature(h, m0 + eps, s0) - _j_quadrature(h, m0 - eps, s0)) / (2 * eps),
                         (_j_quadrature(h, m0, s0 + eps) - _j_quadrature(h, m0, s0 - eps)) / (2 * eps)],
                        dtype=torch.float64)


def _custom_f(r):
    return (r - 1) ** 2 / (r + 1)  # a triangular-discrimination-type f, given only as a callable


@pytest.mark.parametrize("divergence", ["reverse_kl", "softened_reverse_kl", "jensen_shannon", "squared_hellinger",
                                        "forward_kl", "jeffreys", "pearson_chi2", "alpha:0.5", "alpha:2", _custom_f])
def test_uni_instruct_gradient_equals_finite_differences_of_j_sigma(divergence):
    m0, s0 = 0.4, 1.3  # q wider than p keeps every h(r) integrable
    method = _exact(divergence)
    engine = _engine_gradient(method, m0, s0)
    fd = _fd(method.divergence.h, m0, s0)
    torch.testing.assert_close(engine, fd, rtol=1e-5, atol=1e-7)


def test_fused_backward_gives_the_same_uni_instruct_gradient():
    fused = _engine_gradient(_exact("jeffreys", fused_backward=True), 0.3, 1.2, nodes=40)
    plain = _engine_gradient(_exact("jeffreys", fused_backward=False), 0.3, 1.2, nodes=40)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-14)


def test_reverse_kl_is_twice_sid_at_alpha_half_and_not_sid_at_alpha_one():
    m0, s0 = 0.4, 1.3
    rkl = _engine_gradient(_exact("reverse_kl"), m0, s0)
    sid_half = _engine_gradient(SiD(alpha=0.5, weighting="exact"), m0, s0)
    sid_one = _engine_gradient(SiD(alpha=1.0, weighting="exact"), m0, s0)
    torch.testing.assert_close(rkl, 2 * sid_half, rtol=1e-10, atol=1e-12)
    assert (rkl - 2 * sid_one).abs().max() > 0.05 * rkl.abs().max()  # SiD's α = 1 is not the gradient of J_σ


def test_alpha_divergence_limits_are_reverse_and_forward_kl():
    m0, s0 = 0.4, 1.3
    torch.testing.assert_close(_engine_gradient(_exact("alpha:1e-7"), m0, s0),
                               _engine_gradient(_exact("reverse_kl"), m0, s0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(_engine_gradient(_exact("alpha:0.9999999"), m0, s0),
                               _engine_gradient(_exact("forward_kl"), m0, s0), rtol=1e-5, atol=1e-7)


def test_sid_fused_backward_equals_autograd():
    g = torch.Generator().manual_seed(0)
    x, a, b = (torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    alpha = torch.rand(5, generator=g, dtype=torch.float64) * 2
    scale = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    upstream = torch.randn(5, generator=g, dtype=torch.float64)
    grads = []
    for fused in (False, True):
        loss = (sid_per_sample(x, a, b, alpha, scale, fused=fused) * upstream).sum()
        grads.append(torch.autograd.grad(loss, [x, a, b]))
    for plain, closed in zip(*grads):
        torch.testing.assert_close(closed, plain, rtol=1e-12, atol=1e-12)
    # and the formula: L = scale·[(1−α)‖a−b‖² + (a−b)·(b−x)]
    want = scale * ((1 - alpha) * ((a - b) ** 2).sum((1, 2, 3)) + ((a - b) * (b - x)).sum((1, 2, 3)))
    torch.testing.assert_close(sid_per_sample(x, a, b, alpha, scale), want)


def test_sid_compiled_backward_equals_autograd():
    g = torch.Generator().manual_seed(1)
    x, a, b = (torch.randn(4, 8, generator=g, requires_grad=True) for _ in range(3))
    args = (torch.full((4,), 1.2), torch.full((4,), 0.5))
    want = torch.autograd.grad(sid_per_sample(x, a, b, *args, fused=False).sum(), [x, a, b])
    got = torch.autograd.grad(sid_per_sample(x, a, b, *args, fused=True, backend="compile").sum(), [x, a, b])
    for w_, g_ in zip(want, got):
        torch.testing.assert_close(g_, w_, rtol=1e-5, atol=1e-6)


def test_non_finite_samples_are_masked_and_counted():
    x = torch.randn(4, 2, requires_grad=True)
    a = x.detach() * 0.5
    a[1, 0] = float("nan")
    ctx = StepContext(x=x, sigma=torch.ones(4), x_sigma=x, cond=None, d_teacher=a, d_fake=torch.zeros(4, 2))
    loss, metrics = SiD(alpha=1.2, weighting="none").loss_from_context(ctx)
    assert metrics["nonfinite_samples"] == 1 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and (x.grad[1] == 0).all()


# -------------------------------------------------------------------------------------------------
# Through the trainer
# -------------------------------------------------------------------------------------------------
FAST = ["run.progress=false", "run.log_every=1", "run.batch_size=32", "eval.num_samples=100",
        "eval.teacher_steps=3", "student.model.hidden=32", "student.model.depth=1", "student.discriminator_hidden=16",
        "run.steps=8"]


def _cfg(out, *overrides):  # the warm-up after the overrides: a method={...} section replaces the whole section
    return load_config(DistillConfig, None, [f"run.output_dir={out}", *FAST, *overrides, "method.fake_warmup_steps=2"])


@pytest.mark.parametrize("overrides", [
    ["method={name: sid}"],
    ["method={name: sida, gan: {discriminator: encoder}}"],
    ["method={name: sida, gan: {discriminator: head}}"],
    ["method={name: uni_instruct, divergence: jeffreys}"],
    ["method={name: uni_instruct, divergence_schedule: [[0, reverse_kl], [5, forward_kl]]}"],
])
def test_score_identity_methods_train_and_export(overrides, tmp_path):
    summary = distill(_cfg(tmp_path, *overrides))
    assert np.isfinite(summary["student/sliced_w2"])
    rows = [json.loads(line) for line in Path(tmp_path, "metrics.jsonl").read_text().splitlines()]
    assert any("distill_loss" in r for r in rows)
    if "sida" in overrides[0] or "uni_instruct" in overrides[0]:
        assert any("gan_gen_loss" in r for r in rows) and any("disc_loss" in r for r in rows)
    result = json.loads((tmp_path / "eval_final.json").read_text())
    if "schedule" in overrides[0]:
        assert result["method"] == "uni_instruct (reverse_kl → forward_kl)"
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


def test_sid_uses_its_own_defaults(tmp_path):
    from gendiv.training import DistillTrainer

    trainer = DistillTrainer(_cfg(tmp_path, "method={name: sid}"))
    assert trainer.ema_generator.config.sigma_init == 2.5 and trainer.method.options.fake_updates_per_generator_update == 1
    sigma = trainer._sigma("generator", 4000)
    assert sigma.min() >= 0.002 - 1e-6 and 24.0 < sigma.max() < 24.6  # Karras grid over t ∈ [0, 0.8]
    assert trainer.nets.keys() == {"generator", "fake"}


@pytest.mark.parametrize("override, pattern", [
    ("method={name: sid, alpha: 0}", r"method\.alpha: .*greater than 0, got 0"),
    ("method={name: sid, alpha: -1.2}", r"method\.alpha: .*greater than 0, got -1\.2"),
    ("method={name: uni_instruct, divergence: 'alpha:-200', ratio: {ratio_min: 0}}", r"method: divergence .* not finite"),
    ("method={name: uni_instruct, discriminator: none}", r"method\.discriminator"),
    ("method={name: uni_instruct, divergence_schedule: [[0, nonsense]]}", r"divergence_schedule: .*unknown divergence"),
    ("method={name: sid, divergence: js}", r"method\.divergence: unknown option for sid"),
    ("method={name: sid, weighting: sigma}", r"method\.weighting"),
])
def test_bad_score_identity_options_fail_at_load_naming_the_key(override, pattern, tmp_path):
    with pytest.raises(ConfigError, match=pattern):
        _cfg(tmp_path, override)


def test_digits_recipes_run_end_to_end_from_a_trained_teacher(tmp_path):
    """configs/distill_{sid,uni_instruct}_digits.yaml at tiny scale: input gradients through a guided UNet teacher."""
    from gendiv import OneStepPipeline
    from gendiv.training import TrainConfig, train

    repo = Path(__file__).resolve().parents[1]
    train(load_config(TrainConfig, None, [f"run.output_dir={tmp_path / 't'}", "run.progress=false", "data.source=digits",
                                          "data.image_size=8", "run.batch_size=16", "run.steps=3",
                                          "model.block_out_channels=[8,16]"]))
    for name in ("sid", "uni_instruct"):
        cfg = load_config(DistillConfig, repo / "configs" / f"distill_{name}_digits.yaml", [
            f"run.output_dir={tmp_path / name}", "run.progress=false", f"teacher.source=pipeline:{tmp_path / 't' / 'pipeline'}",
            "data.image_size=8", "run.batch_size=8", "run.steps=4", "method.fake_warmup_steps=1", "eval.num_samples=8",
            "run.sample_every=0"])
        distill(cfg)
        pipe = OneStepPipeline.from_pretrained(str(tmp_path / name / "pipeline"))
        assert pipe.student.config.sigma_init == 2.5
        assert len(pipe(batch_size=2, class_labels=[1, 2]).images) == 2
