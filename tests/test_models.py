import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

from gendiv.condition import Condition
from gendiv.models import MLPDenoiser, OneStepGenerator, UNetDenoiser
from gendiv.space import edm_preconditioning


def _unet(cfg, **kw):
    return UNet2DModel(**{**cfg, **kw})


def test_unet2d_denoiser_runs_with_classes_and_features(tiny_unet_config):
    den = UNetDenoiser.from_unet(_unet(tiny_unet_config, num_class_embeds=11), num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    out, feats = den(x, torch.tensor([0.01, 0.5, 3.0, 80.0]), Condition(class_labels=torch.tensor([0, 3, 9, 1])),
                     return_features=True)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert feats.shape == (4, 32, 4, 4)
    # the null flag selects the reserved index 10, the same as passing no labels at all
    drop = Condition(class_labels=torch.tensor([0, 3, 9, 1]), drop=torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(den(x, 0.5, drop), den(x, 0.5, None))


def test_edm_preconditioning_is_applied(tiny_unet_config):
    """D = c_skip·x + c_out·F(c_in·x, c_noise): check against the UNet called by hand."""
    unet = _unet(tiny_unet_config)
    den = UNetDenoiser.from_unet(unet)
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 7.0])
    c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) for c in edm_preconditioning(sigma))
    raw = unet(c_in * x, c_noise.flatten() * 250.0).sample
    torch.testing.assert_close(den(x, sigma), c_skip * x + c_out * raw, atol=1e-5, rtol=1e-5)
    den_v = UNetDenoiser.from_unet(unet, prediction_type="v_prediction")
    torch.testing.assert_close(den_v(x, sigma), c_skip * x - c_out * raw, atol=1e-5, rtol=1e-5)


def test_unet2d_condition_model_with_scalars_and_labels():
    unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2D",
                                num_class_embeds=5, time_cond_proj_dim=32, cross_attention_dim=16)
    den = UNetDenoiser.from_unet(unet, num_classes=4, scalar_names=["beta"])
    x = torch.randn(3, 3, 8, 8)
    cond = Condition(class_labels=torch.tensor([0, 1, 3]), scalars={"beta": torch.tensor([0.2, 0.5, 1.0])})
    out, feats = den(x, 1.0, cond, return_features=True)
    assert out.shape == x.shape and feats is not None
    other = den(x, 1.0, Condition(class_labels=cond.class_labels, scalars={"beta": torch.tensor([0.9, 0.1, 0.3])}))
    assert not torch.allclose(out, other), "the scalar condition must reach the network"
    with pytest.raises(ValueError, match="expects scalar conditions"):
        den(x, 1.0, Condition(class_labels=torch.tensor([0, 1, 3])))


def test_vp_unet_denoiser(tiny_unet_config):
    sched = DDPMScheduler(beta_schedule="linear")
    den = UNetDenoiser.from_unet(_unet(tiny_unet_config), parameterization="vp", prediction_type="epsilon",
                                 vp_schedule=dict(sched.config))
    out = den(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 10.0]))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="needs vp_schedule"):
        UNetDenoiser.from_unet(_unet(tiny_unet_config), parameterization="vp")


def test_bad_inputs(tiny_unet_config):
    den = UNetDenoiser.from_unet(_unet(tiny_unet_config, num_class_embeds=11), num_classes=10)
    with pytest.raises(ValueError, match=r"expects images \[B, 1, H, W\]"):
        den(torch.randn(2, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="expects spatial size in multiples of 2"):
        den(torch.randn(2, 1, 9, 9), 1.0)
    assert den(torch.randn(2, 1, 16, 12), 1.0).shape == (2, 1, 16, 12)  # convolutional: other sizes run
    with pytest.raises(ValueError, match="class label out of range"):
        den(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="sigma must"):
        den(torch.randn(2, 1, 8, 8), torch.ones(3))
    with pytest.raises(ValueError, match="unknown prediction_type 'eps'"):
        UNetDenoiser.from_unet(_unet(tiny_unet_config), prediction_type="eps")
    with pytest.raises(ValueError, match="num_class_embeds=11"):
        UNetDenoiser.from_unet(_unet(tiny_unet_config, num_class_embeds=10), num_classes=10)
    with pytest.raises(ValueError, match="unconditional"):
        UNetDenoiser.from_unet(_unet(tiny_unet_config))(torch.randn(2, 1, 8, 8), 1.0, torch.tensor([0, 1]))


def test_generator_is_denoiser_at_sigma_init(tmp_path):
    den = MLPDenoiser(dim=2, hidden=32, depth=2)
    gen = OneStepGenerator.from_denoiser(den, sigma_init=2.5)
    z = torch.randn(5, 2)
    torch.testing.assert_close(gen(z), den(2.5 * z, 2.5))
    gen.save_pretrained(tmp_path / "g")
    assert (tmp_path / "g" / "diffusion_pytorch_model.safetensors").is_file()
    again = OneStepGenerator.from_pretrained(tmp_path / "g")
    torch.testing.assert_close(again(z), gen(z))
    assert gen.sample_shape(3) == (3, 2)


def test_unet_denoiser_save_load(tmp_path, tiny_unet_config):
    den = UNetDenoiser.from_unet(_unet(tiny_unet_config, num_class_embeds=3), num_classes=2)
    den.save_pretrained(tmp_path / "d")
    again = UNetDenoiser.from_pretrained(tmp_path / "d")
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(again(x, 0.7, torch.tensor([0, 1])), den(x, 0.7, torch.tensor([0, 1])))
