"""Mirror flow matching (issue 25): the mirror maps are gradients of their potentials and invert exactly, the prior is
Student-t, the loss and the pipeline are exact on a point mass, a trained model matches a Dirichlet's moments with
every sample inside the simplex, the pipeline saves and loads, and the configs train from the command line."""
import json
import math
import subprocess
import sys

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from scipy import stats

from gendiv import MirrorFlowMatchingPipeline, VelocityMLP, load_pipeline
from gendiv.mirror import dual_dim, from_dual, inside_mask, student_t, to_dual
from gendiv.objectives.mirror_flow import mirror_flow_loss
from gendiv.toy import get_distribution
from gendiv.toy.convex import Dirichlet, moment_errors

F64 = torch.float64


def potential(x, domain):
    """φ of each domain (gendiv/mirror.py), for the gradient check; the simplex's φ in its K free coordinates."""
    if domain == "simplex":
        full = torch.cat([x, 1 - x.sum(1, keepdim=True)], 1)
        return (full * full.log()).sum(1)
    if domain == "ball":
        r = x.norm(dim=1)
        return 2 * (r * torch.atanh(r) + 0.5 * torch.log(1 - r**2))
    return (x * x.log() + (1 - x) * (1 - x).log()).sum(1)


def interior_points(domain, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    if domain == "simplex":
        x = Dirichlet([0.7, 1.5, 2.0, 0.9]).sample(n, g).double()
        return x / x.sum(1, keepdim=True)  # float64 points on the simplex
    if domain == "ball":
        return get_distribution("ball_uniform", dim=3).sample(n, g).double() * 0.999
    return torch.rand(n, 3, generator=g, dtype=F64) * 0.998 + 0.001


@pytest.mark.parametrize("domain", ["simplex", "ball", "box"])
def test_mirror_map_is_the_gradient_of_its_potential_and_inverts(domain):
    x = interior_points(domain)
    free = x[:, :-1] if domain == "simplex" else x
    free = free.clone().requires_grad_(True)
    grad = torch.autograd.grad(potential(free, domain).sum(), free)[0]
    torch.testing.assert_close(to_dual(x, domain), grad, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(from_dual(to_dual(x, domain), domain), x, atol=1e-10, rtol=1e-10)
    g = torch.Generator().manual_seed(1)
    y = torch.randn(500, dual_dim(domain, x.shape[1]), generator=g, dtype=F64)
    y = 30 * torch.rand(500, 1, generator=g, dtype=F64) * y / y.norm(dim=1, keepdim=True)
    assert inside_mask(from_dual(y, domain), domain).all()  # dual points up to ‖y‖ = 30 map strictly inside
    torch.testing.assert_close(to_dual(from_dual(y[:5] / 10, domain), domain), y[:5] / 10, atol=1e-9, rtol=1e-9)


def test_student_t_prior():
    z = student_t((40_000,), dof=5.0, scale=2.0, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert stats.kstest(z.numpy() / 2.0, stats.t(5).cdf).pvalue > 1e-3
    same = student_t((40_000,), dof=5.0, scale=2.0, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(z, same, rtol=0, atol=0)


def point_mass_velocity(y_star):
    """The exact velocity of a point mass in the dual: y_t = (1 − t)y* + t·prior, so E[prior − y* | y_t] =
    (y_t − y*)/t."""
    return lambda y, t: (y - y_star) / torch.as_tensor(t, dtype=y.dtype).reshape(-1, 1)


def test_loss_and_pipeline_are_exact_on_a_point_mass():
    x_star = torch.tensor([[0.2, 0.5, 0.3]], dtype=F64)
    y_star = to_dual(x_star, "simplex")
    exact = point_mass_velocity(y_star)
    loss = mirror_flow_loss(exact, x_star.expand(64, 3), "simplex", generator=torch.Generator().manual_seed(3))
    assert float(loss) < 1e-20
    wrong = mirror_flow_loss(lambda y, t: 0 * y, x_star.expand(64, 3), "simplex",
                             generator=torch.Generator().manual_seed(3))
    assert float(wrong) > 0.1

    class Exact(VelocityMLP):  # Euler on a linear field is exact: the prior lands on y*
        def forward(self, y, t):
            return exact(y.double(), t.expand(y.shape[0]).double()).to(y.dtype)

    pipe = MirrorFlowMatchingPipeline(Exact(dim=2, hidden=4, depth=0), FlowMatchEulerDiscreteScheduler(), "simplex")
    pipe.set_progress_bar_config(disable=True)
    x = pipe(batch_size=32, num_inference_steps=7, generator=torch.Generator().manual_seed(4)).images
    torch.testing.assert_close(x.double(), x_star.expand(32, 3), atol=1e-5, rtol=0)


def test_trained_model_matches_the_dirichlet_moments_inside_the_simplex():
    """Dirichlet(2, 3, 0.8): after 800 steps the sample mean and covariance match the closed form to within a few
    times the exact-vs-exact sampling noise (0.004 / 0.001 at 4,000 samples), and no sample leaves the simplex."""
    dist = get_distribution("dirichlet_3")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model, ema = VelocityMLP(dim=2, hidden=96, depth=3), VelocityMLP(dim=2, hidden=96, depth=3)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(800):
        loss = mirror_flow_loss(model, dist.sample(256, g), "simplex", generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 0.01)
    pipe = MirrorFlowMatchingPipeline(ema, FlowMatchEulerDiscreteScheduler(), "simplex")
    pipe.set_progress_bar_config(disable=True)
    x = pipe(batch_size=4000, num_inference_steps=50, generator=torch.Generator().manual_seed(1)).images
    assert inside_mask(x, "simplex").all()
    err = moment_errors(dist, x)
    assert err["mean_error"] < 0.02 and err["cov_error"] < 0.006, err


def test_pipeline_save_load_in_fresh_process(tmp_path):
    torch.manual_seed(0)
    pipe = MirrorFlowMatchingPipeline(VelocityMLP(dim=3, hidden=16, depth=1), FlowMatchEulerDiscreteScheduler(),
                                      domain="ball", prior_dof=4.0, prior_scale=0.5)
    pipe.set_progress_bar_config(disable=True)
    x = pipe(batch_size=8, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    assert x.shape == (8, 3) and inside_mask(x, "ball").all()
    pipe.save_pretrained(tmp_path)
    code = (f"import torch, gendiv\n"
            f"p = gendiv.MirrorFlowMatchingPipeline.from_pretrained({str(tmp_path)!r})\n"
            f"p.set_progress_bar_config(disable=True)\n"
            f"assert p.config.domain == 'ball' and p.config.prior_dof == 4.0 and p.config.prior_scale == 0.5\n"
            f"x = p(batch_size=8, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images\n"
            f"torch.save(x, {str(tmp_path / 'x.pt')!r})\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    torch.testing.assert_close(torch.load(tmp_path / "x.pt"), x)
    assert type(load_pipeline(str(tmp_path))).__name__ == "MirrorFlowMatchingPipeline"


def test_pipeline_diffusers_habits():
    """A generator list draws sample i from generator i alone; latents replace the prior draw; a step-end callback
    sees (and may edit) the dual sample; bad arguments are one-line errors."""
    torch.manual_seed(0)
    pipe = MirrorFlowMatchingPipeline(VelocityMLP(dim=2, hidden=16, depth=1), FlowMatchEulerDiscreteScheduler(),
                                      "simplex")
    pipe.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6, 7)]  # noqa: E731
    three = pipe(batch_size=3, num_inference_steps=3, generator=gens(), return_dual=True)
    alone = pipe(batch_size=1, num_inference_steps=3, generator=[torch.Generator().manual_seed(6)]).images
    torch.testing.assert_close(three.images[1:2], alone)
    prior = student_t((3, 2), 5.0, 1.0, torch.Generator().manual_seed(8))
    drawn = pipe(batch_size=3, num_inference_steps=3, generator=torch.Generator().manual_seed(8)).images
    torch.testing.assert_close(pipe(batch_size=3, num_inference_steps=3, latents=prior).images, drawn)
    seen = []

    def to_zero(p, i, t, tensors):
        seen.append(i)
        return {"latents": torch.zeros_like(tensors["latents"])}

    x = pipe(batch_size=2, num_inference_steps=3, callback_on_step_end=to_zero).images
    assert seen == [0, 1, 2] and pipe.num_timesteps == 3
    torch.testing.assert_close(x, torch.full((2, 3), 1 / 3))  # y = 0 is the simplex's centre
    with pytest.raises(ValueError, match="latents must have shape \\(2, 2\\)"):
        pipe(batch_size=2, latents=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        pipe(batch_size=0)
    with pytest.raises(ValueError, match="unknown mirror domain 'cube'"):
        MirrorFlowMatchingPipeline(pipe.velocity, pipe.scheduler, "cube")


@pytest.mark.parametrize("config", ["mirror_flow_dirichlet.yaml", "mirror_flow_ball.yaml"])
def test_configs_train_from_the_command_line(tmp_path, config):
    from gendiv.cli import main

    main(["train", "--config", f"configs/{config}", f"run.output_dir={tmp_path}", "run.steps=3", "run.progress=false",
          "eval.num_samples=200", "mirror_flow.num_steps=4"])
    final = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["final/inside_fraction"] == 1.0 and math.isfinite(final["final/cov_error"])
    pipe = MirrorFlowMatchingPipeline.from_pretrained(str(tmp_path / "pipeline"))
    assert type(pipe.velocity).__name__ == "VelocityMLP"


def test_bad_mirror_input(tmp_path):
    from gendiv.errors import InputError
    from gendiv.training import TrainConfig, load_config, train
    from gendiv.training.config import ConfigError

    with pytest.raises(ValueError, match="unknown mirror domain 'cube'"):
        to_dual(torch.rand(2, 2), "cube")
    with pytest.raises(ConfigError, match="mirror_flow.domain must be one of"):
        load_config(TrainConfig, "configs/mirror_flow_dirichlet.yaml", ["mirror_flow.domain=cube"])
    cfg = load_config(TrainConfig, "configs/mirror_flow_ball.yaml", [f"run.output_dir={tmp_path}", "run.steps=1",
                                                                     "data.source=toy:box_uniform"])
    with pytest.raises(InputError, match=r"data \(toy:box_uniform\): \d+ of 4096 points lie outside the ball"):
        train(cfg)
