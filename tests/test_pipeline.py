import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler, UNet2DModel

from gendiv import GenDivPipeline, MLPDenoiser, UNetDenoiser
from gendiv.sampling import sample_euler


@pytest.fixture
def unet_pipe(tiny_unet_config):
    den = UNetDenoiser.from_unet(UNet2DModel(**tiny_unet_config, num_class_embeds=4), num_classes=3)
    pipe = GenDivPipeline.from_denoiser(den)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_with_edm_euler_equals_functional_euler():
    """Inverting the scheduler's preconditioning must make its Euler step the plain EDM Euler step."""
    torch.manual_seed(0)
    den = MLPDenoiser(dim=2, hidden=32, depth=2)
    sched = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    pipe = GenDivPipeline(den, sched)
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn(16, 2)
    out = pipe(batch_size=16, latents=z, num_inference_steps=10, output_type="pt").images
    sched.set_timesteps(10)
    ref = sample_euler(den, z * sched.sigmas[0], sched.sigmas)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_pipeline_output_types_and_labels(unet_pipe):
    g = torch.Generator().manual_seed(0)
    pil = unet_pipe(batch_size=2, class_labels=[0, 2], num_inference_steps=3, generator=g).images
    assert len(pil) == 2 and pil[0].size == (8, 8)
    arr = unet_pipe(batch_size=2, class_labels=1, num_inference_steps=3, output_type="np").images
    assert arr.shape == (2, 8, 8, 1) and arr.min() >= 0 and arr.max() <= 1
    pt, = unet_pipe(batch_size=2, num_inference_steps=3, output_type="pt", return_dict=False)
    assert pt.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="out of range"):
        unet_pipe(batch_size=1, class_labels=[5], num_inference_steps=2)
    with pytest.raises(ValueError, match="unknown output_type"):
        unet_pipe(batch_size=1, num_inference_steps=2, output_type="jpeg")


def test_pipeline_with_dpmsolver(unet_pipe):
    pipe = GenDivPipeline(unet_pipe.denoiser, EDMDPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, num_inference_steps=4, output_type="pt").images
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_save_and_load_in_fresh_process(unet_pipe, tmp_path):
    unet_pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["denoiser"] == ["gendiv.models.denoiser", "UNetDenoiser"]
    ours = unet_pipe(batch_size=3, class_labels=[0, 1, 2], num_inference_steps=4, output_type="np",
                     generator=torch.Generator().manual_seed(7)).images
    code = (
        "import sys, numpy as np, torch, gendiv\n"
        "from gendiv import GenDivPipeline\n"
        f"p = GenDivPipeline.from_pretrained({str(tmp_path / 'pipe')!r})\n"
        "p.set_progress_bar_config(disable=True)\n"
        "x = p(batch_size=3, class_labels=[0, 1, 2], num_inference_steps=4, output_type='np',"
        " generator=torch.Generator().manual_seed(7)).images\n"
        f"np.save({str(tmp_path / 'x.npy')!r}, x)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), ours, atol=1e-5)


def test_points_refuse_pil():
    pipe = GenDivPipeline.from_denoiser(MLPDenoiser(dim=2, hidden=16, depth=1))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="needs image data"):
        pipe(batch_size=2, num_inference_steps=2)
    assert pipe(batch_size=2, num_inference_steps=2, output_type="np").images.shape == (2, 2)
