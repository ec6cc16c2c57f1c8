"""Where the GAN term's discriminator reads its features (``method.gan.features``: the fake score network or the
frozen teacher; ``method.gan.layers``: the bottleneck or every encoder level), checked against the computation
written out by hand, gradients by autograd and finite differences, and tiny runs that train and resume."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gendiv.distill.losses import (FeatureSource, discriminator_loss, fake_score_and_discriminator_loss,
                                   generator_gan_loss, score_difference_step, weighted_denoising_error)
from gendiv.models import DiscriminatorHead, MLPDenoiser, MultiScaleDiscriminatorHead, UNetDenoiser
from gendiv.space import append_dims
from gendiv.training import DistillConfig, TrainConfig, distill, load_config, train

BLOCKS, SIZE, BS = [8, 16, 32], 16, 3


def _unet(seed: int) -> UNetDenoiser:
    torch.manual_seed(seed)
    n = len(BLOCKS)
    return UNetDenoiser(unet_config=dict(sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=BLOCKS,
                                         layers_per_block=1, norm_num_groups=4, down_block_types=["DownBlock2D"] * n,
                                         up_block_types=["UpBlock2D"] * n))


def _head(on, layers="bottleneck"):
    torch.manual_seed(7)
    return DiscriminatorHead.for_denoiser(on, torch.zeros(1, 1, SIZE, SIZE), hidden=8, layers=layers)


def _fake_update_inputs(seed: int = 1):
    """x_fake, σ, n, x_real, σ_real, σ_gan, n_gan, n_real of one fake-score update."""
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.randn(BS, 1, SIZE, SIZE, generator=g)  # noqa: E731
    sig = lambda: torch.exp(torch.randn(BS, generator=g))  # noqa: E731
    return dict(x_fake=img(), sigma=sig(), noise=img(), x_real=img(), sigma_real=sig(), sigma_gan=sig(),
                noise_gan=img(), noise_real=img())


def _fake_update(fake, head, d, weight=0.1, features=FeatureSource()):
    return fake_score_and_discriminator_loss(fake, head, d["x_fake"], None, d["sigma"], d["noise"], d["x_real"], None,
                                             d["sigma_real"], d["sigma_gan"], d["noise_gan"], d["noise_real"], weight,
                                             features)


def _noisy(x, sigma, noise):
    return x + append_dims(sigma, x.ndim) * noise


def test_default_features_are_the_fake_bottleneck_in_one_pass_as_before():
    """Defaults: DMD2's computation as it was written before the options existed (one fake pass over the three
    noised batches, one head on the mid block's output)."""
    fake, d = _unet(0), _fake_update_inputs()
    head = _head(fake)
    assert isinstance(head, DiscriminatorHead) and head.config.in_channels == BLOCKS[-1]
    loss, metrics = _fake_update(fake, head, d)
    x_in = torch.cat([_noisy(d["x_fake"], d["sigma"], d["noise"]), _noisy(d["x_fake"], d["sigma_gan"], d["noise_gan"]),
                      _noisy(d["x_real"], d["sigma_real"], d["noise_real"])])
    caught = []
    hook = fake.unet.mid_block.register_forward_hook(lambda m, i, o: caught.append(o))
    denoised, feats = fake(x_in, torch.cat([d["sigma"], d["sigma_gan"], d["sigma_real"]]), None, return_features=True)
    hook.remove()
    assert torch.equal(feats, caught[0])
    logits = head(feats[BS:])
    dsm = weighted_denoising_error(denoised[:BS], d["x_fake"], d["sigma"]).mean()
    torch.testing.assert_close(loss, dsm + 0.1 * discriminator_loss(logits[BS:], logits[:BS]), rtol=1e-6, atol=0)
    assert metrics["fake_loss"] == pytest.approx(float(dsm), rel=1e-6)

    # the generator's logits: the head on the fake network's bottleneck at the step's own x_σ
    x = torch.randn(BS, 1, SIZE, SIZE, requires_grad=True)
    teacher = _unet(2).requires_grad_(False)
    ctx = score_difference_step(x, teacher, fake, d["sigma"], None, discriminator=head, gan_grad=True,
                                generator=torch.Generator().manual_seed(3))
    want = head(fake(ctx.x_sigma, d["sigma"], None, return_features=True)[1])
    torch.testing.assert_close(ctx.logits, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layers", ["bottleneck", "all"])
def test_teacher_features_train_the_head_alone_and_the_fake_only_denoises(layers):
    teacher, fake, d = _unet(0).requires_grad_(False), _unet(1), _fake_update_inputs()
    head = _head(teacher, layers)
    fake_ref, head_ref = copy.deepcopy(fake), copy.deepcopy(head)
    loss, _ = _fake_update(fake, head, d, features=FeatureSource(teacher, layers))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    # the fake score's gradient is exactly its denoising loss's
    dsm = weighted_denoising_error(fake_ref(_noisy(d["x_fake"], d["sigma"], d["noise"]), d["sigma"]), d["x_fake"],
                                   d["sigma"]).mean()
    dsm.backward()
    for p, q in zip(fake.parameters(), fake_ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8)
    # the head's is weight_disc × the logistic loss's on the teacher's features
    x_disc = torch.cat([_noisy(d["x_fake"], d["sigma_gan"], d["noise_gan"]),
                        _noisy(d["x_real"], d["sigma_real"], d["noise_real"])])
    _, feats = teacher(x_disc, torch.cat([d["sigma_gan"], d["sigma_real"]]), None, return_features=layers)
    logits = head_ref(feats)
    (0.1 * discriminator_loss(logits[BS:], logits[:BS])).backward()
    grads = [(p.grad, q.grad) for p, q in zip(head.parameters(), head_ref.parameters())]
    assert any(float(a.abs().max()) > 0 for a, _ in grads)
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("layers", ["bottleneck", "all"])
def test_generator_gan_gradient_flows_through_the_frozen_teacher_features(layers):
    teacher, fake = _unet(0).requires_grad_(False), _unet(1).requires_grad_(False)
    head = _head(teacher, layers).requires_grad_(False)
    x = torch.randn(BS, 1, SIZE, SIZE, requires_grad=True)
    sigma = torch.tensor([0.3, 1.0, 3.0])
    ctx = score_difference_step(x, teacher, fake, sigma, None, discriminator=head, gan_grad=True,
                                generator=torch.Generator().manual_seed(5), features=FeatureSource(teacher, layers))
    assert not ctx.d_fake.requires_grad and not ctx.d_teacher.requires_grad  # only the GAN term reaches x
    (grad,) = torch.autograd.grad(generator_gan_loss(ctx.logits), x)
    assert all(p.grad is None for p in teacher.parameters())
    noise = ((ctx.x_sigma - x) / append_dims(sigma, x.ndim)).detach()

    def gan_loss(x_):  # softplus(−ℓ) with ℓ the head on the teacher's features at x_ + σn
        return generator_gan_loss(head(teacher(_noisy(x_, sigma, noise), sigma, None, return_features=layers)[1]))

    x2 = x.detach().clone().requires_grad_(True)
    (direct,) = torch.autograd.grad(gan_loss(x2), x2)
    torch.testing.assert_close(grad, direct, rtol=1e-5, atol=1e-9)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    eps = 1e-2
    with torch.no_grad():
        fd = (gan_loss(x.detach() + eps * v) - gan_loss(x.detach() - eps * v)) / (2 * eps)
    assert float(grad.abs().max()) > 0
    assert float((grad * v).sum()) == pytest.approx(float(fd), rel=2e-2, abs=1e-6)


def test_all_layers_one_head_per_encoder_level_and_the_logit_is_their_sum():
    den = _unet(0)
    head = _head(den, "all")
    assert isinstance(head, MultiScaleDiscriminatorHead) and len(head.heads) == len(BLOCKS) + 1
    # level i: block_out_channels[i] channels, halved in size by every level with a downsampler (all but the last);
    # then the mid block at the last level's width
    n = len(BLOCKS)
    assert list(head.config.in_channels) == [*BLOCKS, BLOCKS[-1]]
    assert list(head.config.spatial) == [SIZE >> min(i + 1, n - 1) for i in range(n)] + [SIZE >> (n - 1)]
    caught = []
    hooks = [b.register_forward_hook(lambda m, i, o: caught.append(o[0] if isinstance(o, tuple) else o))
             for b in [*den.unet.down_blocks, den.unet.mid_block]]
    x = torch.randn(BS, 1, SIZE, SIZE)
    _, feats = den(x, 1.0, return_features="all")
    for h in hooks:
        h.remove()
    assert len(feats) == len(caught) and all(torch.equal(a, b) for a, b in zip(feats, caught))
    torch.testing.assert_close(head(feats), sum(h(f) for h, f in zip(head.heads, feats)), rtol=1e-6, atol=1e-7)
    _, bottleneck = den(x, 1.0, return_features=True)
    assert torch.equal(bottleneck, feats[-1])
    with pytest.raises(ValueError, match="MLPDenoiser has one feature layer"):
        MLPDenoiser(dim=2, hidden=8, depth=1)(torch.zeros(2, 2), 1.0, return_features="all")


# -------------------------------------------------------------------------------------------------
# tiny runs: each option trains and resumes exactly, for every method with a GAN section
# -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(load_config(TrainConfig, None, [f"run.output_dir={out}", "run.progress=false", "data.source=digits",
                                          "data.image_size=8", "run.batch_size=8", "run.steps=2",
                                          "model.block_out_channels=[8,16]"]))
    return out / "pipeline"


def _run(out, teacher, method, options, *extra):
    return distill(load_config(DistillConfig, None, [
        f"run.output_dir={out}", "run.progress=false", "run.log_every=1", "run.steps=3", "run.checkpoint_every=1",
        f"teacher.source=pipeline:{teacher}", "teacher.guidance_scale=1.5", "data.source=digits", "data.image_size=8",
        "run.batch_size=4", f"method.name={method}", "method.fake_warmup_steps=1",
        "method.fake_updates_per_generator_update=1", "student.discriminator_hidden=8", *options, *extra]))


def _losses(out):
    rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return [[r.get(k, 0.0) for k in ("fake_loss", "disc_loss", "distill_loss", "gan_gen_loss")] for r in rows
            if "fake_loss" in r]


@pytest.mark.parametrize("method, options", [
    ("dmd2", ["method.gan.features=teacher"]),
    ("smd", ["method.gan.layers=all"]),
    ("f_distill", ["method.gan.features=teacher", "method.gan.layers=all"]),
    ("dmd2_few_step", ["method.gan.features=teacher", "method.gan.layers=all"]),
])
def test_each_option_trains_and_resumes(method, options, teacher_folder, tmp_path):
    _run(tmp_path / "a", teacher_folder, method, options)
    assert _run(tmp_path / "b", teacher_folder, method, options, "run.stop_after=2") == {"stopped_at": 2}
    _run(tmp_path / "b", teacher_folder, method, options, "run.resume=true")
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == len(b) == 3 and all(row[1] > 0 for row in a) and a[-1][3] > 0  # disc and GAN terms ran
    np.testing.assert_allclose(a, b, rtol=1e-5)
