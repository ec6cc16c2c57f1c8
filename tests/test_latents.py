"""Sobol (quasi-Monte-Carlo) latents: exactly N(0, 1) per coordinate at the resolution of the point set, a (0, m, 2)-net
in the first two coordinates (the low-discrepancy property), lower discrepancy than i.i.d. draws, seeded, and the same
latents through OneStepPipeline(latents_sampler="sobol")."""
import numpy as np
import pytest
import torch
from scipy import stats
from scipy.stats import qmc

from gendiv import OneStepGenerator, OneStepPipeline
from gendiv.latents import SobolNormal, sample_latents
from gendiv.models import MLPDenoiser


def _uniform(z: torch.Tensor) -> np.ndarray:
    """Back to [0, 1)^d through Φ."""
    return stats.norm.cdf(z.double().flatten(1).numpy())


def test_each_coordinate_is_standard_normal_to_the_resolution_of_the_set():
    """2^m scrambled Sobol points put exactly one point in each interval [k/2^m, (k+1)/2^m) of every coordinate, so
    the KS distance to N(0, 1) is at most 1/N (i.i.d. draws: about 0.87/√N), and the moments sit far closer to
    0 and 1 than i.i.d. draws' standard errors (1/√N, √(2/N))."""
    n = 4096
    z = sample_latents((n, 4, 2, 2), torch.Generator().manual_seed(0), "sobol")
    assert z.shape == (n, 4, 2, 2) and z.dtype == torch.float32 and torch.isfinite(z).all()
    flat = z.double().flatten(1)
    for d in range(flat.shape[1]):
        ks = stats.kstest(flat[:, d].numpy(), "norm").statistic
        assert ks <= 1 / n + 1e-6, (d, ks)
        counts = np.bincount((_uniform(flat[:, d:d + 1])[:, 0] * n).astype(int), minlength=n)
        assert (counts == 1).all()
    assert flat.mean(0).abs().max() < 0.1 / n ** 0.5
    assert (flat.var(0) - 1).abs().max() < 0.1 * (2 / n) ** 0.5


def test_the_first_two_coordinates_form_a_net_and_the_set_has_lower_discrepancy_than_iid_draws():
    """Every dyadic box of area 1/N in the first two coordinates holds exactly one of N = 2^10 points (a (0, m, 2)-net,
    kept by the scramble); the centred L2 discrepancy in 8 dimensions is below that of i.i.d. uniforms."""
    n = 1024
    u = _uniform(sample_latents((n, 8), torch.Generator().manual_seed(3), "sobol"))
    for cols, rows in ((32, 32), (2, 512), (1024, 1)):  # every shape of elementary box with area 1/1024
        cells = (u[:, 0] * cols).astype(int) * rows + (u[:, 1] * rows).astype(int)
        assert (np.bincount(cells, minlength=n) == 1).all(), (cols, rows)
    iid = torch.rand(n, 8, generator=torch.Generator().manual_seed(3)).double().numpy()
    assert qmc.discrepancy(u) < 0.5 * qmc.discrepancy(iid)


def test_sobol_latents_are_seeded_and_successive_draws_continue_one_sequence():
    a = sample_latents((64, 3), torch.Generator().manual_seed(7), "sobol")
    b = sample_latents((64, 3), torch.Generator().manual_seed(7), "sobol")
    c = sample_latents((64, 3), torch.Generator().manual_seed(8), "sobol")
    assert torch.equal(a, b) and not torch.equal(a, c)
    whole = SobolNormal((3,), seed=11).draw(64)
    chunks = SobolNormal((3,), seed=11)
    torch.testing.assert_close(torch.cat([chunks.draw(16), chunks.draw(48)]), whole, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown latents_sampler 'halton'"):
        sample_latents((4, 3), None, "halton")
    with pytest.raises(ValueError, match="1 to 21201 dimensions"):
        SobolNormal((3, 100, 100), seed=0)


def test_one_step_pipeline_draws_sobol_latents_from_its_generator():
    torch.manual_seed(0)
    pipe = OneStepPipeline(student=OneStepGenerator.from_denoiser(MLPDenoiser(dim=2, hidden=8, depth=1), 2.0))
    out = pipe(batch_size=32, generator=torch.Generator().manual_seed(5), latents_sampler="sobol", output_type="pt").images
    z = sample_latents((32, 2), torch.Generator().manual_seed(5), "sobol")
    torch.testing.assert_close(out, pipe(batch_size=32, latents=z, output_type="pt").images)
    iid = pipe(batch_size=32, generator=torch.Generator().manual_seed(5), output_type="pt").images
    assert not torch.allclose(out, iid)
    with pytest.raises(ValueError, match="pass one generator, not a list"):
        pipe(batch_size=2, generator=[torch.Generator(), torch.Generator()], latents_sampler="sobol")
