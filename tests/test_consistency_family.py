"""The consistency and flow-map family on the distillation contract (issue 19): CD, iCT, sCM, MeanFlow and few-step
DMD/DMD2 students, each checked against a truth that cannot drift.

Truths: the exact probability-flow map of an analytic mixture (gendiv/toy/flow_map.py, itself checked against a
Gaussian's closed form); CD's loss and sCM's tangent vanish on it; MeanFlow's target is a fixed point of the exact
average velocity; JVP tangents equal finite differences; iCT's curriculum and σ discretisation follow the paper's
formulas (and a Monte-Carlo histogram of the lognormal); few-step sampling with the exact map gives the data
distribution. Short trainings show every new method runs through the unchanged trainer and reads every option.
"""
import math
import types

import pytest
import torch
from torch import nn

from gendiv.condition import Condition
from gendiv.distill import METHODS, STUDENT, StepDraws
from gendiv.distill.consistency import (ConsistencyDistillation, ImprovedConsistencyTraining, default_huber_c,
                                        heun_step, ict_num_scales, karras_grid, lognormal_index_probs)
from gendiv.distill.continuous_consistency import SCM, consistency_tangent
from gendiv.distill.few_step import FewStepSection, backward_simulation, student_passes
from gendiv.distill.losses import pseudo_huber
from gendiv.distill.mean_flow import RATIO, MeanFlow
from gendiv.distill.tangents import finite_difference_jvp, jvp
from gendiv.models import OneStepGenerator
from gendiv.models.denoiser import MLPDenoiser
from gendiv.pipelines import FewStepPipeline, FewStepScheduler
from gendiv.toy import AnalyticDenoiser, GaussianMixture
from gendiv.toy.distributions import ring8_imbalanced
from gendiv.toy.flow_map import exact_average_velocity, exact_flow_map
from gendiv.training import ConfigError, DistillConfig, load_config
from gendiv.training.distill import DistillTrainer

from .option_reads import unread_options

RING = ring8_imbalanced()
TEACHER = AnalyticDenoiser(RING)
SIGMA_MIN = 0.002


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors here are tiny: a second intra-op thread only adds synchronisation (7× slower on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class ExactConsistency(nn.Module):
    """The exact consistency function f*(x, σ) = Φ_{σ→σ_min}(x) of the ring, called like the student."""

    config = types.SimpleNamespace(sigma_init=80.0)

    def __init__(self, steps: int = 64):  # RK4 steps: ~1e-6 here, far below what most tests resolve
        super().__init__()
        self.steps = steps

    def forward(self, x, cond=None, return_features=False, sigma=None):
        if sigma is None:  # one step: G(z) = f*(σ_max z, σ_max)
            x, sigma = x * self.config.sigma_init, self.config.sigma_init
        return exact_flow_map(TEACHER, x, sigma, SIGMA_MIN, steps=self.steps)


class ExactFlowMap(nn.Module):
    """X(x, σ; r) of the exact average velocity, in MeanFlow's parameterisation u = (x − X)/σ."""

    def forward(self, x, cond=None, return_features=False, sigma=None):
        r = cond.scalars[RATIO]
        u = exact_average_velocity(TEACHER, x, r * sigma, sigma)
        return x.double() - u * sigma[:, None].double()


def _draws(batch=256, seed=0, teacher=TEACHER, step=0):
    rng = _gen(seed)
    return StepDraws(rng=rng, device=torch.device("cpu"), step=step, batch_size=batch, teacher=teacher,
                     condition=lambda n: None, latents=lambda n: torch.randn(n, 2, generator=rng),
                     sigma=lambda which, n: None, real=lambda n: (RING.sample(n, rng).float(), None))


# -------------------------------------------------------------------------------------------------
# The exact flow map
# -------------------------------------------------------------------------------------------------
def test_exact_flow_map_matches_a_gaussians_closed_form_and_converges_on_the_ring():
    # N(μ, τ²I): trajectories are x_σ = μ + c·√(τ² + σ²), so Φ_{σ→s}(x) = μ + (x − μ)·√(τ² + s²)/√(τ² + σ²)
    mu, tau = torch.tensor([0.3, -0.2], dtype=torch.float64), 0.2
    gauss = AnalyticDenoiser(GaussianMixture(mu[None], tau ** 2, torch.ones(1, dtype=torch.float64)))
    x = 5 * torch.randn(64, 2, generator=_gen(0), dtype=torch.float64)
    closed = mu + (x - mu) * math.sqrt(tau ** 2 + 0.01 ** 2) / math.sqrt(tau ** 2 + 25)
    assert torch.allclose(exact_flow_map(gauss, x, 5.0, 0.01), closed, atol=1e-6)
    z = 80 * torch.randn(64, 2, generator=_gen(1), dtype=torch.float64)
    coarse, fine = exact_flow_map(TEACHER, z, 80.0, SIGMA_MIN), exact_flow_map(TEACHER, z, 80.0, SIGMA_MIN, steps=256)
    assert (coarse - fine).abs().max() < 1e-4


# -------------------------------------------------------------------------------------------------
# CD and sCM vanish on the exact map
# -------------------------------------------------------------------------------------------------
def _cd_loss(student, num_scales):
    method = ConsistencyDistillation(num_scales=num_scales)
    method.target = student
    loss, _ = method.loss(STUDENT, {STUDENT: student}, _draws(batch=200, seed=3))
    return float(loss)


def test_cd_loss_is_zero_for_the_exact_map_up_to_the_teacher_steps_error():
    denoiser_as_f = lambda x, cond=None, sigma=None: TEACHER(x, sigma)  # noqa: E731 — D is not a consistency function
    exact = ExactConsistency()
    losses = [_cd_loss(exact, n) for n in (18, 36)]
    assert losses[0] < 1e-3 * _cd_loss(denoiser_as_f, 18)
    assert losses[1] < losses[0] / 8  # Heun's local error O(Δσ³): the squared loss falls ≥ 2⁶/8 per halving


def test_heun_step_is_second_order():
    x = 2 * torch.randn(64, 2, generator=_gen(2), dtype=torch.float64)
    errors = []
    for h in (0.2, 0.1):
        s, s_next = torch.full((64,), 1.0, dtype=torch.float64), torch.full((64,), 1.0 - h, dtype=torch.float64)
        errors.append((heun_step(TEACHER, x, s, s_next, None) - exact_flow_map(TEACHER, x, s, s_next)).abs().max())
    assert 5.5 < errors[0] / errors[1] < 11  # local error O(h³): × 8 per halving


def test_scm_tangent_vanishes_on_the_exact_map():
    """Finite-difference tangents: the analytic denoiser takes σ as data (detached), so no dual numbers reach it."""
    x = RING.sample(64, _gen(4)).double()
    sigma = torch.exp(torch.randn(64, generator=_gen(5), dtype=torch.float64)).clamp(0.05, 20)
    x_sigma = x + sigma[:, None] * torch.randn(64, 2, generator=_gen(6), dtype=torch.float64)
    method = SCM(jvp="finite_difference")
    _, g_exact = method.trig_tangent(ExactConsistency(steps=128), x_sigma, sigma, None, TEACHER)  # error/h matters
    _, g_denoiser = method.trig_tangent(lambda x, cond=None, sigma=None: TEACHER(x, sigma), x_sigma, sigma, None,
                                        TEACHER)
    assert g_exact.norm(dim=1).max() < 1e-4 * g_denoiser.norm(dim=1).mean()


# -------------------------------------------------------------------------------------------------
# Tangents
# -------------------------------------------------------------------------------------------------
def _mlp_student():
    torch.manual_seed(0)
    return OneStepGenerator.from_denoiser(MLPDenoiser(dim=2, hidden=32, depth=2), 80.0).double()


def test_jvp_tangent_equals_finite_differences():
    student = _mlp_student()
    x = torch.randn(32, 2, generator=_gen(7), dtype=torch.float64)
    sigma = torch.exp(torch.randn(32, generator=_gen(8), dtype=torch.float64))
    v = torch.randn(32, 2, generator=_gen(9), dtype=torch.float64)
    f, exact = consistency_tangent(student, x, sigma, v, None, mode="func")
    f_fd, fd = consistency_tangent(student, x, sigma, v, None, mode="finite_difference", fd_step=1e-3)
    # the denoiser computes in float32: central differences carry ~1e-4 round-off at this step
    # f: the primal through torch.func.jvp vs a plain forward; the same math, round-off apart across CPU kernels
    torch.testing.assert_close(f, f_fd, rtol=1e-6, atol=1e-9)
    assert torch.allclose(exact, fd, rtol=2e-3, atol=2e-4)
    _, without_sigma = torch.func.jvp(lambda xx: student(xx, None, sigma=sigma), (x,), (v,))
    assert (exact - without_sigma).abs().mean() > 100 * (exact - fd).abs().mean()  # the σ direction is in it


class _NoForwardMode(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.sin()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass


def test_untraceable_modules_fall_back_to_finite_differences():
    fn = lambda x, s: _NoForwardMode.apply(x) * s[:, None]  # noqa: E731
    x, s = torch.randn(8, 3, generator=_gen(0), dtype=torch.float64), torch.rand(8, dtype=torch.float64) + 0.5
    t = (torch.randn(8, 3, generator=_gen(1), dtype=torch.float64), torch.ones(8, dtype=torch.float64))
    with pytest.raises((RuntimeError, NotImplementedError)):
        jvp(fn, (x, s), t, mode="func")
    with pytest.warns(UserWarning, match="finite differences"):
        _, auto = jvp(fn, (x, s), t, mode="auto", fd_step=torch.full((8,), 1e-5, dtype=torch.float64))
    exact = x.cos() * t[0] * s[:, None] + x.sin()  # d/dε [sin(x + εt)·(s + ε)]
    assert torch.allclose(auto, exact, atol=1e-8)
    assert torch.allclose(finite_difference_jvp(fn, (x, s), t, torch.full((8,), 1e-5, dtype=torch.float64))[1], exact,
                          atol=1e-8)


# -------------------------------------------------------------------------------------------------
# MeanFlow
# -------------------------------------------------------------------------------------------------
def test_mean_flow_identity_holds_for_the_exact_average_velocity():
    """u = v − (σ − s)·du/dσ along a trajectory, with u from quadrature (the exact flow map) and du/dσ by central
    differences along the trajectory."""
    n, h = 32, 1e-3
    x = RING.sample(n, _gen(10)).double()
    sigma = torch.full((n,), 0.8, dtype=torch.float64)
    s = torch.full((n,), 0.1, dtype=torch.float64)
    x_sigma = x + sigma[:, None] * torch.randn(n, 2, generator=_gen(11), dtype=torch.float64)
    u = exact_average_velocity(TEACHER, x_sigma, s, sigma)
    v = (x_sigma - TEACHER(x_sigma, sigma)) / sigma[:, None]
    ahead, behind = (exact_flow_map(TEACHER, x_sigma, sigma, sigma + d) for d in (h, -h))
    du = (exact_average_velocity(TEACHER, ahead, s, sigma + h)
          - exact_average_velocity(TEACHER, behind, s, sigma - h)) / (2 * h)
    assert torch.allclose(u, v - (sigma - s)[:, None] * du, atol=1e-6)
    assert (u - v).abs().mean() > 1e-2  # the correction term matters


def test_mean_flow_target_is_a_fixed_point_of_the_exact_flow_map():
    """Finite-difference tangents: the analytic denoiser takes σ as data (detached), so no dual numbers reach it."""
    n = 32
    x = RING.sample(n, _gen(12)).double()
    sigma = torch.exp(torch.randn(n, generator=_gen(13), dtype=torch.float64)).clamp(0.05, 10)
    s = sigma * torch.rand(n, generator=_gen(14), dtype=torch.float64).clamp(0.05, 0.95)
    x_sigma = x + sigma[:, None] * torch.randn(n, 2, generator=_gen(15), dtype=torch.float64)
    v = (x_sigma - TEACHER(x_sigma, sigma)) / sigma[:, None]
    student = ExactFlowMap()
    own = student(x_sigma, Condition(scalars={RATIO: s / sigma}), sigma=sigma)
    target = MeanFlow(jvp="finite_difference").target(student, x_sigma, s, sigma, v, None)
    assert (target - own).abs().max() < 1e-5
    wrong_v = MeanFlow(jvp="finite_difference").target(student, x_sigma, s, sigma, 0.5 * v, None)
    assert (wrong_v - own).abs().mean() > 1e-2  # the target does depend on the teacher's velocity


def test_mean_flow_student_starts_as_the_teachers_ddim_step(tmp_path):
    """r = s/σ enters through a zero-initialised scalar path: at initialisation X_θ(x, σ; r) = D_θ(x, σ) for all r."""
    cfg = _cfg(tmp_path, "method.name=mean_flow")
    trainer = DistillTrainer(cfg)
    student = trainer.unwrapped[STUDENT]
    x, sigma = torch.randn(16, 2, generator=_gen(0)), torch.rand(16, generator=_gen(1)) + 0.1
    outs = [student(x, Condition(scalars={RATIO: torch.full((16,), r)}), sigma=sigma) for r in (0.0, 0.5, 1.0)]
    # the zero-initialised path adds exact zeros, but the extra input changes matmul shapes: round-off, not bits
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[1], outs[2], rtol=1e-6, atol=1e-6)
    assert RATIO in student.config.backbone_config["scalar_names"]


# -------------------------------------------------------------------------------------------------
# iCT: curriculum, σ discretisation, pseudo-Huber
# -------------------------------------------------------------------------------------------------
def test_ict_curriculum_doubles_from_s0_to_s1():
    # K = 1000, s0 = 10, s1 = 1280: log₂⌊1280/10⌋ + 1 = 8 stages, K' = ⌊1000/8⌋ = 125
    expected = {0: 11, 124: 11, 125: 21, 250: 41, 375: 81, 500: 161, 625: 321, 750: 641, 874: 641, 875: 1281, 999: 1281}
    assert {k: ict_num_scales(k, 1000, 10, 1280) for k in expected} == expected
    assert ict_num_scales(10 ** 6, 1000, 10, 1280) == 1281


def test_ict_sigma_discretisation_is_the_lognormal_mass_between_grid_points():
    sigmas = karras_grid(41, SIGMA_MIN, 80.0, 7.0).double()
    probs = lognormal_index_probs(sigmas, -1.1, 2.0)
    assert probs.shape == (40,) and abs(float(probs.sum()) - 1) < 1e-12
    draws = torch.exp(-1.1 + 2.0 * torch.randn(400_000, generator=_gen(0), dtype=torch.float64))
    draws = draws[(draws >= sigmas[0]) & (draws < sigmas[-1])]
    freq = torch.bincount(torch.bucketize(draws, sigmas, right=True) - 1, minlength=40).double() / len(draws)
    assert (freq - probs).abs().max() < 4e-3


def test_ict_grid_follows_the_curriculum_and_the_run_length_is_its_default():
    cfg = load_config(DistillConfig, None, ["method.name=ict", *NO_TEACHER, "run.steps=800"])
    assert cfg.method.curriculum_steps == 800
    method = ImprovedConsistencyTraining(cfg.method)
    assert len(method.grid(0, "cpu")) == 11 and len(method.grid(799, "cpu")) == 1281
    grid = method.grid(0, "cpu").double()
    rho = 7.0
    ramp = torch.linspace(0, 1, 11, dtype=torch.float64)
    paper = (SIGMA_MIN ** (1 / rho) + ramp * (80.0 ** (1 / rho) - SIGMA_MIN ** (1 / rho))) ** rho  # iCT eq. 6
    assert torch.allclose(grid, paper, rtol=1e-6)


def test_pseudo_huber_constant_and_limits():
    x = torch.zeros(4, 3, 8, 8)
    assert default_huber_c(x) == pytest.approx(0.00054 * math.sqrt(3 * 64))
    small, large = torch.full((1, 2), 1e-6), torch.full((1, 2), 10.0)
    c = 0.01
    assert float(pseudo_huber(small, torch.zeros(1, 2), c)) == pytest.approx(2e-12 / (2 * c), rel=1e-5)  # ‖δ‖²/2c
    assert float(pseudo_huber(large, torch.zeros(1, 2), c)) == pytest.approx(math.sqrt(200) - c, rel=1e-6)


# -------------------------------------------------------------------------------------------------
# Few-step students
# -------------------------------------------------------------------------------------------------
def test_few_step_sampling_with_the_exact_map_gives_the_data_distribution():
    """Each pass of the exact consistency function lands on the data distribution, so k-pass samples do too: every
    mode's mass within 4 standard errors, and the spread around the modes that of the data (E‖x − μ_k‖² = 2·0.05²
    within 10 %, 4.5 standard errors). The same chain with the denoiser in place of the map fails (a control)."""
    n = 2000
    z = torch.randn(n, 2, generator=_gen(21), dtype=torch.float64)
    weights = RING.weights.double()
    tolerance = 4 * (weights * (1 - weights) / n).sqrt()

    def check(x):
        mode = RING.responsibilities(x.double()).argmax(1)
        mass = torch.bincount(mode, minlength=8).double() / n
        spread = (x.double() - RING.means.double()[mode]).pow(2).sum(1).mean()
        return bool(((mass - weights).abs() < tolerance).all()) and abs(float(spread) / (2 * 0.05 ** 2) - 1) < 0.1

    method = ConsistencyDistillation()
    for k in (1, 2, 4):
        method.options.few_step = FewStepSection(steps=k)
        assert check(method.sample(ExactConsistency(), z, None, generator=_gen(22))), k
    assert not check(student_passes(lambda z, cond=None, sigma=None: TEACHER(z * 80.0, 80.0), z, None, [80.0], 1))


def test_backward_simulation_differentiates_only_the_last_pass():
    student = _mlp_student()
    z = torch.randn(16, 2, generator=_gen(0), dtype=torch.float64)
    sigmas = FewStepSection(steps=4).grid(80.0)
    draws = _draws(seed=5)
    x, j = backward_simulation(student, z, None, sigmas, draws)
    while j == 0:
        x, j = backward_simulation(student, z, None, sigmas, draws)
    x.pow(2).sum().backward()
    grads = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    replay = _draws(seed=5)  # the same draws again, for a chain whose earlier passes are evaluated without gradient
    while True:
        j_replay = int(torch.randint(len(sigmas), (1,), generator=replay.rng))
        if j_replay == 0:
            continue
        with torch.no_grad():
            state = student_passes(student, z, None, sigmas, j_replay, replay.rng)
        break
    noisy = state + sigmas[j_replay] * torch.randn(state.shape, generator=replay.rng, dtype=state.dtype)
    student(noisy, None, sigma=sigmas[j_replay]).pow(2).sum().backward()
    assert j_replay == j
    assert all(torch.allclose(a, p.grad) for a, p in zip(grads, student.parameters()))


def test_few_step_grid_default_and_bad_grids():
    grid = FewStepSection(steps=4).grid(80.0)
    karras = karras_grid(5, SIGMA_MIN, 80.0, 7.0).flip(0)
    assert grid == pytest.approx(karras[:4].tolist(), rel=1e-6) and len(FewStepSection().grid(80.0)) == 1
    with pytest.raises(ValueError, match="must lie below the student's σ_init"):
        FewStepSection(steps=2, sigmas=[90.0]).grid(80.0)


# -------------------------------------------------------------------------------------------------
# Through the unchanged trainer
# -------------------------------------------------------------------------------------------------
FAST = ["run.progress=false", "run.log_every=1", "run.batch_size=32", "eval.num_samples=100", "eval.teacher_steps=3",
        "student.model.hidden=16", "student.model.depth=1", "student.discriminator_hidden=16", "run.steps=4"]
NO_TEACHER = ["teacher.source=none", "data.source=toy:ring8_imbalanced"]
EVERYTHING = {  # settings that switch on every optional branch, so each option has a chance to be read
    "cd": ["method.metric=pseudo_huber", "method.few_step={steps: 2, sigmas: [1.0]}"],
    "ict": [*NO_TEACHER, "method.few_step={steps: 2, sigmas: [1.0]}"],
    "scm": ["method.few_step={steps: 2, sigmas: [1.0]}"],
    "mean_flow": ["method.few_step={steps: 2, sigmas: [1.0]}"],
    "dmd_few_step": ["method.fake_warmup_steps=1", "method.regression.weight=0.5", "method.regression.pairs=8",
                     "method.reuse_generator_samples=true", "method.few_step={steps: 2, sigmas: [1.0]}"],
    "dmd2_few_step": ["method.fake_warmup_steps=1", "method.fake_updates_per_generator_update=1",
                      "method.regression.weight=0.5", "method.regression.pairs=8",
                      "method.reuse_generator_samples=true", "method.few_step={steps: 2, sigmas: [1.0]}"],
}


def _cfg(tmp_path, *overrides):
    return load_config(DistillConfig, None, [f"run.output_dir={tmp_path}", *FAST, *overrides])


@pytest.mark.parametrize("name", sorted(EVERYTHING))
def test_new_methods_train_through_the_unchanged_trainer_and_read_every_option(name, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, f"method.name={name}", *EVERYTHING[name])
    trainers = []  # built inside the recording: set-up reads options too
    unread = unread_options(cfg.method, lambda: trainers.append(DistillTrainer(cfg)) or trainers[0].fit(), monkeypatch)
    trainer = trainers[0]
    assert not unread, f"{name} accepts options it never reads: {sorted(unread)}"
    assert trainer.unwrapped[STUDENT].config.sampling_sigmas == [80.0, 1.0]
    assert trainer.method.student_nfe == 2
    # the trainer's export, called as diffusers users call a pipeline, samples as the method does in evaluation
    pipe = FewStepPipeline.from_pretrained(str(tmp_path / "pipeline"))
    z = torch.randn(8, 2, generator=_gen(0))
    ours = trainer.method.sample(trainer.ema_generator, z, None, generator=_gen(1))
    theirs = pipe(batch_size=8, latents=z, generator=_gen(1), output_type="pt").images
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert pipe.scheduler.config.kind == ("flow_map" if name == "mean_flow" else "consistency")


def test_few_step_pipeline_saves_and_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    student = _mlp_student().float()
    student.register_to_config(sampling_sigmas=[80.0, 2.0, 0.5])
    pipe = FewStepPipeline(student)
    pipe.save_pretrained(tmp_path / "few")
    expected = pipe(batch_size=4, generator=_gen(3), output_type="pt").images
    fewer = pipe(batch_size=4, generator=_gen(3), output_type="pt", num_inference_steps=2).images
    assert pipe.scheduler.timesteps.tolist() == pytest.approx([80.0, karras_grid(3, SIGMA_MIN, 80.0, 7.0)[1].item()])
    assert not torch.allclose(expected, fewer)
    torch.save(expected, tmp_path / "expected.pt")
    code = (f"import torch; from gendiv import load_pipeline; from diffusers import DiffusionPipeline\n"
            f"p = load_pipeline({str(tmp_path / 'few')!r})\n"
            f"assert type(p).__name__ == 'FewStepPipeline' and p.scheduler.num_inference_steps == 3\n"
            f"x = p(batch_size=4, generator=torch.Generator().manual_seed(3), output_type='pt').images\n"
            f"torch.testing.assert_close(x, torch.load({str(tmp_path / 'expected.pt')!r}), atol=1e-5, rtol=0)\n"
            f"q = DiffusionPipeline.from_pretrained({str(tmp_path / 'few')!r}, trust_remote_code=True)\n"
            f"assert type(q).__name__ == 'FewStepPipeline'\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300)


def test_few_step_scheduler_refuses_bad_grids():
    with pytest.raises(ValueError, match="positive and decreasing"):
        FewStepScheduler(sigmas=[80.0, 90.0])
    with pytest.raises(ValueError, match="unknown kind"):
        FewStepScheduler(kind="ddim")
    with pytest.raises(ValueError, match="num_inference_steps must be a positive integer"):
        FewStepScheduler(sigmas=[80.0]).set_timesteps(0)


def test_cd_target_is_a_frozen_ema_of_the_student(tmp_path):
    trainer = DistillTrainer(_cfg(tmp_path, "method.name=cd", "method.target_ema=0.5"))
    target = trainer.method.target
    assert trainer.extra_state["cd_target"] is target and not any(p.requires_grad for p in target.parameters())
    before = [p.detach().clone() for p in target.parameters()]
    trainer.fit()
    student = trainer.unwrapped[STUDENT]
    assert not any(p.requires_grad for p in target.parameters())
    assert max((a - p).abs().max().item() for a, p in zip(before, target.parameters())) > 1e-6  # it moved
    old = [p.detach().clone() for p in target.parameters()]
    trainer.method.after_update(STUDENT, {STUDENT: student}, None)
    assert all(torch.allclose(p, 0.5 * o + 0.5 * s) for p, o, s in zip(target.parameters(), old, student.parameters()))


def test_the_trainer_never_names_the_new_methods():
    import importlib
    from pathlib import Path

    source = Path(importlib.import_module("gendiv.training.distill").__file__).read_text()
    for name in ("cd", "ict", "scm", "mean_flow", "dmd_few_step", "dmd2_few_step"):
        assert name in METHODS and f'"{name}"' not in source and f"'{name}'" not in source
    assert "consistency" not in source and "few_step" not in source


# -------------------------------------------------------------------------------------------------
# Bad input: one clear line each
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["method.name=cd", "method.nope=1"], r"method\.nope: unknown option for cd; allowed: .*num_scales"),
    (["method.name=cd", "method.num_scales=many"], r"method\.num_scales: .*valid integer"),
    (["method.name=cd", "method.num_scales=1"], r"method\.num_scales: .*greater than or equal to 2"),
    (["method.name=cd", "method.metric=l1"], r"method\.metric: .*'l2' or 'pseudo_huber'"),
    (["method.name=cd", "method.sigma_min=100"], r"method: .*need sigma_max > sigma_min"),
    (["method.name=scm", "method.jvp=forward"], r"method\.jvp: .*'auto', 'func' or 'finite_difference'"),
    (["method.name=mean_flow", "method.instantaneous_fraction=2"], r"method\.instantaneous_fraction: .*less than or"),
    (["method.name=ict", *NO_TEACHER, "method.s0=20", "method.s1=10"], r"method: need s1 ≥ s0"),
    (["method.name=dmd2_few_step", "method.few_step.sigmas=[1.0]"], r"method\.few_step: sigmas must be 3 positive"),
    (["method.name=dmd2_few_step", "method.few_step.steps=0"], r"method\.few_step\.steps: .*greater than or equal"),
    (["method.name=dmd2_few_step", "method.fake_warmup_steps=10", "run.steps=10"], r"never be updated"),
])
def test_bad_options_of_the_new_methods_are_one_clear_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(DistillConfig, None, overrides)
    assert "\n" not in str(err.value)


def test_cd_without_a_teacher_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="method cd distils a teacher"):
        DistillTrainer(_cfg(tmp_path, "method.name=cd", *NO_TEACHER))


def test_gendiv_sample_uses_a_few_step_students_own_grid(tmp_path):
    """`gendiv sample --pipeline` on a FewStepPipeline folder samples on the student's σ grid unless --steps is given
    (a multi-step default of 18 would silently run 18 passes)."""
    import numpy as np

    from gendiv.cli import main

    student = _mlp_student().float()
    student.register_to_config(sampling_sigmas=[80.0, 2.0, 0.5])
    pipe = FewStepPipeline(student)
    pipe.save_pretrained(tmp_path / "few")
    own = pipe(batch_size=4, generator=_gen(0), output_type="pt").images
    two = pipe(batch_size=4, generator=_gen(0), output_type="pt", num_inference_steps=2).images
    main(["sample", "--pipeline", str(tmp_path / "few"), "--num-samples", "4", "--out", str(tmp_path / "a")])
    main(["sample", "--pipeline", str(tmp_path / "few"), "--num-samples", "4", "--steps", "2", "--out",
          str(tmp_path / "b")])
    a, b = (np.load(tmp_path / f"{k}.npz")["samples"] for k in "ab")
    np.testing.assert_allclose(a, own.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, two.numpy(), rtol=1e-5, atol=1e-6)
