"""Pixel-space teacher folders (issue 22, part 1): the scheduler's x̂₀ clipping is honoured (value as the scheduler's
own pred_original_sample, gradient straight through); learned-variance DDPM, VQ-VAE LDM and unknown transformer
folders are refused naming folder, component and reason; a class-conditional UNet2DModel's null class is stated."""
import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, LDMPipeline, UNet2DModel, VQModel

from gendiv.condition import Condition
from gendiv.models.from_diffusers import denoiser_from_unet_and_scheduler
from gendiv.models.teachers import load_teacher


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"in_channels": 1, "out_channels": 1, **kw}
    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, **kw)
    with torch.no_grad():
        for p in unet.parameters():  # large random outputs, so that clipping is active
            p.add_(0.3 * torch.randn_like(p))
    return unet


def point(sched, t, seed=1):
    g = torch.Generator().manual_seed(seed)
    ac = sched.alphas_cumprod[t]
    alpha, sigma = ac.sqrt(), (1 - ac).sqrt()
    x_t = alpha * torch.randn(2, 1, 8, 8, generator=g) + sigma * torch.randn(2, 1, 8, 8, generator=g)
    return x_t, alpha, sigma


@pytest.mark.parametrize("settings", [{}, {"thresholding": True, "sample_max_value": 1.5},
                                      {"clip_sample_range": 0.5}], ids=["clip_sample", "thresholding", "range"])
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_stock_clipping_config_x0_equals_the_schedulers(cls, settings):
    sched, unet, t = cls(**settings), tiny_unet(), 800  # stock: clip_sample=True
    sched.set_timesteps(5)  # DDIM steps 1000 → 800 → ...: t = 800 is on its grid
    den = denoiser_from_unet_and_scheduler(unet, sched)
    x_t, alpha, sigma = point(sched, t)
    with torch.no_grad():
        raw = unet(x_t, t).sample
        ref = sched.step(raw, t, x_t).pred_original_sample
        ours = den(x_t / alpha, (sigma / alpha).expand(2))
    unclipped = (x_t - sigma * raw) / alpha
    assert (ref != unclipped).any()  # the clipping is active at this point
    torch.testing.assert_close(ours, ref, atol=5e-5, rtol=1e-4)


def test_clipping_passes_the_gradient_straight_through():
    unet, t = tiny_unet(), 800
    clipped = denoiser_from_unet_and_scheduler(unet, DDPMScheduler())
    plain = denoiser_from_unet_and_scheduler(unet, DDPMScheduler(clip_sample=False))
    x_t, alpha, sigma = point(DDPMScheduler(), t)
    weights, grads = torch.linspace(-1, 1, 64).view(1, 1, 8, 8), []
    for den in (clipped, plain):
        (den(x_t / alpha, (sigma / alpha).expand(2)) * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in den.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_learned_variance_ddpm_is_refused(tmp_path):
    folder = tmp_path / "learned"
    learned = DDPMScheduler(variance_type="learned_range")
    DDPMPipeline(unet=tiny_unet(out_channels=2), scheduler=learned).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"learned.*learned-variance DDPM.*learned_range.*out_channels=2"):
        load_teacher(str(folder))


def test_vq_latent_diffusion_is_refused_not_sampled_as_pixels(tmp_path):
    folder = tmp_path / "ldm"
    vq = VQModel(in_channels=3, out_channels=3, latent_channels=1, block_out_channels=(8,), norm_num_groups=4,
                 num_vq_embeddings=8, vq_embed_dim=1, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",))
    LDMPipeline(vqvae=vq, unet=tiny_unet(), scheduler=DDIMScheduler()).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"ldm: LDMPipeline has a vqvae component \(a VQ-VAE latent"):
        load_teacher(str(folder))


def test_unknown_transformer_is_refused_naming_the_component(tmp_path):
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    with pytest.raises(ValueError, match=r"flux: FluxPipeline has a transformer component "
                                         r"diffusers.FluxTransformer2DModel, whose call gendiv does not know"):
        load_teacher(str(tmp_path / "flux"))


def test_class_conditional_unet_needs_its_null_class_and_maps_labels_exactly(tmp_path):
    unet, sched = tiny_unet(num_class_embeds=4), DDPMScheduler(clip_sample=False)
    folder = tmp_path / "cond"
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"cond \(DDPMPipeline\): the UNet has num_class_embeds=4 but no stated null "
                                         r"class; give null_class"):
        load_teacher(str(folder))
    x_t, alpha, sigma = point(sched, 500)

    def folder_x0(label):
        with torch.no_grad():
            eps = unet(x_t, 500, class_labels=torch.full((2,), label)).sample
        return (x_t - sigma * eps) / alpha

    for null, real in ((3, [0, 1, 2]), (0, [1, 2, 3])):
        den, _, _ = load_teacher(str(folder), null_class=null)
        assert den.config.num_classes == 3
        with torch.no_grad():
            for ours_label, their_label in enumerate(real):
                out = den(x_t / alpha, (sigma / alpha).expand(2), Condition(class_labels=torch.full((2,), ours_label)))
                torch.testing.assert_close(out, folder_x0(their_label), atol=1e-5, rtol=1e-5)
            out = den(x_t / alpha, (sigma / alpha).expand(2), None)  # the null class
            torch.testing.assert_close(out, folder_x0(null), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="null_class=4 is outside the UNet's 4 class embeddings"):
        load_teacher(str(folder), null_class=4)
