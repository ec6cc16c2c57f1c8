import math

import pytest
import torch

from gendiv import space
from gendiv.condition import Condition
from gendiv.models.denoiser import DenoiserMixin
from gendiv.toy import AnalyticDenoiser, conditional2d


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample", "flow"])
def test_conversions_round_trip(pred):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    if pred == "flow":
        t = torch.rand(5, 1, generator=g) * 0.9 + 0.05
        alpha, sigma = 1 - t, t
    else:
        alpha = torch.rand(5, 1, generator=g) * 0.9 + 0.05
        sigma = (1 - alpha**2).sqrt()
    x_t = alpha * x0 + sigma * eps
    target = space.prediction_from_x0(x0, x_t, alpha, sigma, pred)
    # the true target of each parameterisation, written out independently
    expected = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "sample": x0, "flow": eps - x0}[pred]
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(space.x0_from_prediction(target, x_t, alpha, sigma, pred), x0, atol=1e-5, rtol=1e-5)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="unknown prediction_type 'eps'"):
        space.x0_from_prediction(torch.zeros(1), torch.zeros(1), 1.0, 1.0, "eps")


def test_score_denoiser_round_trip():
    x, d, s = torch.randn(4, 2), torch.randn(4, 2), torch.rand(4) + 0.1
    torch.testing.assert_close(space.denoiser_from_score(space.score_from_denoiser(d, x, s), x, s), d)


def test_karras_grid():
    s = space.karras_sigmas(18)
    assert len(s) == 19 and s[-1] == 0
    assert math.isclose(float(s[0]), 80.0, rel_tol=1e-5) and math.isclose(float(s[-2]), 0.002, rel_tol=1e-4)
    assert (s[:-1].diff() < 0).all()
    # ρ-th roots are evenly spaced
    torch.testing.assert_close(s[:-1].double().pow(1 / 7).diff(), torch.full((17,), float(s[:-1].double().pow(1 / 7).diff()[0])).double())


def test_sigma_samplers():
    g = torch.Generator().manual_seed(0)
    grid = space.karras_sigmas(1000, append_zero=False).flip(0)
    s = space.sample_sigma("karras_index", 5000, generator=g, min_index=20, max_index=980)
    assert s.min() >= grid[20] - 1e-6 and s.max() <= grid[980] + 1e-3
    ln = space.sample_sigma("lognormal", 20000, generator=g).log()
    assert abs(float(ln.mean()) + 1.2) < 0.05 and abs(float(ln.std()) - 1.2) < 0.05
    with pytest.raises(ValueError, match="unknown σ sampler"):
        space.sample_sigma("nope", 3)


def test_vp_edm_mapping():
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(beta_schedule="linear").alphas_cumprod
    sig = space.vp_sigmas_from_alphas_cumprod(ac)
    t = space.vp_timestep_from_sigma(sig[[0, 10, 500, 999]].float(), ac)
    torch.testing.assert_close(t, torch.tensor([0.0, 10.0, 500.0, 999.0]), atol=2e-3, rtol=0)
    alpha, sigma_t = space.vp_alpha_sigma(sig[500])
    torch.testing.assert_close(alpha**2, ac[500].double(), atol=1e-6, rtol=0)


class _OracleNet(DenoiserMixin, torch.nn.Module):
    """A 'network' that returns the exact prediction of a mixture in whatever parameterisation it is given,
    reading σ back from the network input/time it receives. If the denoiser's conversions are right, D is exact."""

    def __init__(self, dist, parameterization, prediction_type, alphas_cumprod=None):
        super().__init__()
        from types import SimpleNamespace

        self.dist = dist
        self.config = SimpleNamespace(parameterization=parameterization, prediction_type=prediction_type,
                                      sigma_data=0.5, num_classes=dist.num_classes, scalar_names=[], c_noise_scale=1.0)
        if alphas_cumprod is not None:
            self.alphas_cumprod = alphas_cumprod
        self.dtype = torch.float32

    def _check_input_shape(self, x):
        pass

    def _network(self, net_input, net_time, cond, want):
        p, pred = self.config.parameterization, self.config.prediction_type
        if p == "edm":
            sigma = (4 * net_time).exp()
            c_skip, c_out, c_in, _ = space.edm_preconditioning(sigma[:, None])
            x = net_input / c_in
            d = self.dist.denoise(x, sigma, cond)
            raw = d if pred == "sample" else (d - c_skip * x) / (c_out if pred == "epsilon" else -c_out)
        elif p == "vp":
            ac = self.alphas_cumprod.double()
            lo = net_time.floor().long().clamp(0, len(ac) - 2)
            # σ from the interpolated log-σ grid, mirroring the forward map
            log_grid = space.vp_sigmas_from_alphas_cumprod(ac).log()
            frac = (net_time.double() - lo)
            sigma = (log_grid[lo] + frac * (log_grid[lo + 1] - log_grid[lo])).exp().float()
            alpha_t, sigma_t = space.vp_alpha_sigma(sigma[:, None])
            x = net_input / alpha_t
            d = self.dist.denoise(x, sigma, cond)
            raw = space.prediction_from_x0(d, net_input, alpha_t, sigma_t, pred)
        else:
            t = (net_time / 1000)[:, None]
            x = net_input / (1 - t)
            d = self.dist.denoise(x, (t / (1 - t)).flatten(), cond)
            raw = space.prediction_from_x0(d, net_input, 1 - t, t, "flow")
        return raw, None


@pytest.mark.parametrize("param,pred", [("edm", "epsilon"), ("edm", "v_prediction"), ("edm", "sample"),
                                        ("vp", "epsilon"), ("vp", "v_prediction"), ("vp", "sample"), ("flow", "flow")])
def test_denoiser_parameterisations_reach_the_canonical_space(param, pred):
    from diffusers import DDPMScheduler

    dist = conditional2d()
    ac = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    net = _OracleNet(dist, param, pred, ac)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=g)
    sigma = torch.exp(torch.empty(64).uniform_(-3, 2, generator=g))
    if param == "vp":  # keep σ inside the VP grid
        sig_grid = space.vp_sigmas_from_alphas_cumprod(ac)
        sigma = sigma.clamp(float(sig_grid[0]) * 1.01, float(sig_grid[-1]) * 0.99)
    cond = Condition(class_labels=torch.randint(0, 4, (64,), generator=g))
    torch.testing.assert_close(net(x, sigma, cond), AnalyticDenoiser(dist)(x, sigma, cond), atol=2e-4, rtol=1e-4)
