"""Guidance (issues 11, 20, 24): the guiders against exact class-conditional mixture scores, their composition, diffusers
interop both ways, guidance in the pipelines, and guidance-free training (GFT, model guidance)."""
import ast
import json
from pathlib import Path

import pytest
import torch
from diffusers import EDMEulerScheduler
from diffusers.guiders import AdaptiveProjectedGuidance
from diffusers.guiders import ClassifierFreeGuidance as DiffusersCFG

from gendiv import GenDivPipeline, MLPDenoiser, UNetDenoiser
from gendiv.condition import GUIDANCE_SCALAR, Condition, with_guidance_scale
from gendiv.guidance import (AutoGuidedDenoiser, ClassifierFreeGuidedDenoiser, DiffusersGuidedDenoiser,
                             IndependentConditionGuidedDenoiser, IndependentConditionGuider, SigmaIntervalGuidedDenoiser,
                             SigmaIntervalGuider, TimestepGuidedDenoiser, UnconditionalPriorGuidedDenoiser)
from gendiv.models import scalar_embedding, with_scalar_condition
from gendiv.objectives.guidance_free import draw_beta, gft_conditional, gft_loss
from gendiv.toy import AnalyticDenoiser, get_distribution

DIST = get_distribution("conditional2d")
EXACT = AnalyticDenoiser(DIST)


def noised_batch(n=256, sigma=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = DIST.sample_labels(n, g)
    x = DIST.sample(n, g, class_labels=labels).double() + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, torch.full((n,), sigma, dtype=torch.float64), Condition(class_labels=labels)


# ------------------------------------------------------------------------------------------------------------
# math with exact scores
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [0.0, 1.0, 2.5, 4.0])
@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.5])
def test_cfg_is_the_score_of_the_tilted_density(s, sigma):
    """(D_s − x)/σ² = s·∇log p_σ(x|c) + (1 − s)·∇log p_σ(x), the score of p(x|c)^s p(x)^(1−s)."""
    x, sig, cond = noised_batch(sigma=sigma)
    x = x.requires_grad_()
    (g_c,) = torch.autograd.grad(DIST.log_prob(x, sig, cond).sum(), x)
    (g_u,) = torch.autograd.grad(DIST.log_prob(x, sig).sum(), x)
    guided = ClassifierFreeGuidedDenoiser(EXACT, s)(x.detach(), sig, cond)
    torch.testing.assert_close((guided - x.detach()) / sigma**2, s * g_c + (1 - s) * g_u, atol=1e-6 / sigma**2, rtol=1e-6)


def test_scale_one_is_the_conditional_model_for_every_guider():
    x, sig, cond = noised_batch()
    plain = EXACT(x, sig, cond)
    for guider in (ClassifierFreeGuidedDenoiser(EXACT, 1.0), IndependentConditionGuidedDenoiser(EXACT, 1.0),
                   AutoGuidedDenoiser(EXACT, EXACT, 1.0), UnconditionalPriorGuidedDenoiser(EXACT, EXACT, 1.0),
                   SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(EXACT, 1.0), 0.1, 1.0)):
        torch.testing.assert_close(guider(x, sig, cond), plain)


def test_interval_equals_cfg_inside_and_conditional_outside():
    x, _, cond = noised_batch(n=6)
    sigma = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 5.0], dtype=torch.float64)
    interval = SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(EXACT, 3.0), sigma_lo=0.2, sigma_hi=1.0)
    guided = interval(x, sigma, cond)
    full = ClassifierFreeGuidedDenoiser(EXACT, 3.0)(x, sigma, cond)
    plain = EXACT(x, sigma, cond)
    inside = (sigma > 0.2) & (sigma <= 1.0)
    torch.testing.assert_close(guided[inside], full[inside])
    torch.testing.assert_close(guided[~inside], plain[~inside])
    # composes with any guider: interval ∘ autoguidance
    weak = AnalyticDenoiser(get_distribution("conditional2d", std=0.2))
    auto = SigmaIntervalGuidedDenoiser(AutoGuidedDenoiser(EXACT, weak, 2.0), 0.2, 1.0)(x, sigma, cond)
    torch.testing.assert_close(auto[inside], (weak(x, sigma, cond) + 2 * (plain - weak(x, sigma, cond)))[inside])
    torch.testing.assert_close(auto[~inside], plain[~inside])


def test_second_model_guiders():
    x, sig, cond = noised_batch()
    # unconditional prior = the same model's null pass → CFG
    torch.testing.assert_close(UnconditionalPriorGuidedDenoiser(EXACT, EXACT, 2.0)(x, sig, cond),
                               ClassifierFreeGuidedDenoiser(EXACT, 2.0)(x, sig, cond))
    # a different prior: its unconditional prediction is the negative
    other = AnalyticDenoiser(get_distribution("ring8_imbalanced"))
    torch.testing.assert_close(UnconditionalPriorGuidedDenoiser(EXACT, other, 2.0)(x, sig, cond),
                               other(x, sig) + 2 * (EXACT(x, sig, cond) - other(x, sig)))
    # autoguidance against itself is the model, at any scale; it needs no labels on an unconditional model
    torch.testing.assert_close(AutoGuidedDenoiser(EXACT, EXACT, 5.0)(x, sig, cond), EXACT(x, sig, cond))
    ring = AnalyticDenoiser(get_distribution("ring8_imbalanced"))
    weak = AnalyticDenoiser(get_distribution("ring8_imbalanced", std=0.15))
    torch.testing.assert_close(AutoGuidedDenoiser(ring, weak, 2.0)(x, sig), 2 * ring(x, sig) - weak(x, sig))


def test_icg_uses_random_labels_not_the_null_class():
    x, sig, cond = noised_batch(n=4000)
    icg = IndependentConditionGuidedDenoiser(EXACT, 2.0, seed=3)
    neg = icg.negative_condition(cond, 4000, "cpu")
    assert neg.drop is None or not neg.drop.any()
    counts = torch.bincount(neg.class_labels, minlength=4).double() / 4000
    assert (counts - 0.25).abs().max() < 0.03  # uniform, independent of x
    out = icg(x, sig, cond)
    assert not torch.allclose(out, ClassifierFreeGuidedDenoiser(EXACT, 2.0)(x, sig, cond))
    assert torch.isfinite(out).all()


def test_icg_docstring_identity_is_the_posterior_weighted_one():
    """∇log p_σ(x) = Σ_c p(c|x)·∇log p_σ(x|c) (what icg.py states), and not Σ_c p(c)·∇log p_σ(x|c) (what it said)."""
    from gendiv.toy import AnalyticClassifier

    x, sig, _ = noised_batch(n=512, sigma=0.3)
    per_class = torch.stack([DIST.score(x, sig, Condition(class_labels=torch.full((512,), c))) for c in range(4)], 1)
    posterior = AnalyticClassifier(DIST)(x, sig).exp()
    prior = torch.bincount(DIST.component_class, weights=DIST.weights, minlength=4)
    marginal = DIST.score(x, sig)
    torch.testing.assert_close((posterior[:, :, None] * per_class).sum(1), marginal, atol=1e-9, rtol=1e-9)
    assert ((prior[None, :, None] * per_class).sum(1) - marginal).norm(dim=1).mean() > 1.0


def test_guidance_rescale_matches_the_formula():
    x, sig, cond = noised_batch()
    pos, neg = EXACT(x, sig, cond), EXACT(x, sig, cond.with_null())
    guided = neg + 4 * (pos - neg)
    want = 0.7 * guided * (pos.std(1) / guided.std(1))[:, None] + 0.3 * guided
    torch.testing.assert_close(ClassifierFreeGuidedDenoiser(EXACT, 4.0, guidance_rescale=0.7)(x, sig, cond), want)


def test_tsg_on_a_unet(tiny_unet_config):
    torch.manual_seed(0)
    den = UNetDenoiser(unet_config=tiny_unet_config)  # unconditional: TSG needs no labels
    x, sig = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0])
    plain = den(x, sig)
    torch.testing.assert_close(TimestepGuidedDenoiser(den, 1.0)(x, sig), plain)
    torch.testing.assert_close(TimestepGuidedDenoiser(den, 3.0, noise_scale=0.0)(x, sig), plain)
    tsg = TimestepGuidedDenoiser(den, 3.0, noise_scale=2.0)
    out = tsg(x, sig)
    assert torch.isfinite(out).all() and not torch.allclose(out, plain)
    assert not tsg.embedding._forward_hooks  # the perturbation hook is removed after the negative pass
    torch.testing.assert_close(den(x, sig), plain)


def test_guidance_bad_input(tiny_unet_config):
    x, sig, cond = noised_batch(n=4)
    with pytest.raises(ValueError, match="time-step guidance perturbs a time-step embedding, but MLPDenoiser has no "
                                         "time-embedding hook point"):
        TimestepGuidedDenoiser(MLPDenoiser(dim=2), 2.0)
    unconditional = AnalyticDenoiser(get_distribution("ring8_imbalanced"))
    with pytest.raises(ValueError, match="classifier-free guidance needs a class-conditional denoiser with a null class"):
        ClassifierFreeGuidedDenoiser(unconditional, 2.0)(x, sig)
    with pytest.raises(ValueError, match="needs class labels"):
        ClassifierFreeGuidedDenoiser(EXACT, 2.0)(x, sig)
    with pytest.raises(ValueError, match=r"window \(100, 200\] holds none of the schedule's σ values \[0\.002, 80\]"):
        SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(EXACT, 2.0), 100, 200).check_schedule(
            torch.tensor([80.0, 1.0, 0.002]))
    with pytest.raises(ValueError, match="0 ≤ sigma_lo < sigma_hi"):
        SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(EXACT, 2.0), 1.0, 0.5)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        ClassifierFreeGuidedDenoiser(EXACT, float("nan"))
    with pytest.raises(ValueError, match=r"β must lie in \(0, 1\]"):
        gft_conditional(MLPDenoiser(dim=2, num_classes=4, scalar_names=[GUIDANCE_SCALAR]), x.float(), sig.float(), cond,
                        torch.tensor([0.5, 1.5, 0.2, 1.0]))
    with pytest.raises(ValueError, match="hooks transformer layers"):
        from diffusers.guiders import PerturbedAttentionGuidance
        DiffusersGuidedDenoiser(EXACT, PerturbedAttentionGuidance(perturbed_guidance_layers=[0]))


# ------------------------------------------------------------------------------------------------------------
# diffusers interop
# ------------------------------------------------------------------------------------------------------------
def test_scalar_embedding_is_diffusers_get_guidance_scale_embedding():
    """Compared with diffusers' own function, read from its source (its module needs transformers to import)."""
    import diffusers

    source = Path(diffusers.__file__).parent / "pipelines" / "latent_consistency_models" / "pipeline_latent_consistency_text2img.py"
    tree = ast.parse(source.read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "get_guidance_scale_embedding")
    fn.decorator_list = []
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "diffusers", "exec"), namespace)
    w = torch.tensor([0.0, 0.5, 1.0, 6.5, 11.0])
    for dim in (64, 256, 33):
        torch.testing.assert_close(scalar_embedding(w, dim), namespace["get_guidance_scale_embedding"](None, w, dim),
                                   atol=0, rtol=0)


def _pipe(num_classes=3, seed=0):
    torch.manual_seed(seed)
    den = MLPDenoiser(dim=2, hidden=32, depth=1, num_classes=num_classes)
    pipe = GenDivPipeline.from_denoiser(den)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_guidance_scale_guider_and_stock_diffusers_guiders():
    pipe = _pipe()
    run = lambda **kw: pipe(batch_size=8, class_labels=[0, 1, 2, 0, 1, 2, 0, 1], num_inference_steps=6,  # noqa: E731
                            output_type="pt", generator=torch.Generator().manual_seed(0), **kw).images
    plain, cfg = run(), run(guidance_scale=3.0)
    assert not torch.allclose(plain, cfg)
    torch.testing.assert_close(run(guider=ClassifierFreeGuidedDenoiser(pipe.denoiser, 3.0)), cfg)
    torch.testing.assert_close(run(guider=DiffusersCFG(guidance_scale=3.0)), cfg)
    assert torch.isfinite(run(guider=AdaptiveProjectedGuidance(guidance_scale=3.0))).all()
    # σ-interval: gendiv's guider and the diffusers one (EDM timesteps are ln σ/4) give the same images
    gendiv_interval = run(guider=SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(pipe.denoiser, 3.0), 0.3, 5.0))
    torch.testing.assert_close(run(guider=SigmaIntervalGuider(guidance_scale=3.0, sigma_lo=0.3, sigma_hi=5.0)),
                               gendiv_interval)
    assert not torch.allclose(gendiv_interval, cfg) and not torch.allclose(gendiv_interval, plain)
    with pytest.raises(ValueError, match="give either guidance_scale"):
        run(guidance_scale=2.0, guider=DiffusersCFG(guidance_scale=3.0))
    with pytest.raises(ValueError, match="guider must be a gendiv guider"):
        run(guider="cfg")
    with pytest.raises(ValueError, match="holds none of the schedule's σ values"):
        run(guider=SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(pipe.denoiser, 3.0), 100.0, 200.0))


def test_gendiv_guiders_save_as_diffusers_guiders(tmp_path):
    from gendiv.guidance import IndependentConditionGuider

    g = SigmaIntervalGuider(guidance_scale=2.0, sigma_lo=0.1, sigma_hi=2.0, timestep_format="sigma")
    g.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "guider_config.json").read_text())["sigma_lo"] == 0.1
    loaded = SigmaIntervalGuider.from_pretrained(tmp_path)
    loaded.set_state(step=0, num_inference_steps=10, timestep=torch.tensor(0.5))
    assert loaded.num_conditions == 2
    loaded.set_state(step=1, num_inference_steps=10, timestep=torch.tensor(3.0))
    assert loaded.num_conditions == 1  # outside the window: the conditional pass only
    icg = IndependentConditionGuider(guidance_scale=2.0)
    icg.set_state(step=0, num_inference_steps=1, timestep=torch.tensor(1.0))
    embeds = torch.randn(4, 7, 16)
    batches = icg.prepare_inputs({"prompt_embeds": (embeds, torch.zeros_like(embeds))})
    assert torch.equal(batches[0].prompt_embeds, embeds)
    neg = batches[1].prompt_embeds
    assert not torch.equal(neg, torch.zeros_like(embeds)) and abs(float(neg.std() / embeds.std()) - 1) < 0.1


# ------------------------------------------------------------------------------------------------------------
# guidance-free training
# ------------------------------------------------------------------------------------------------------------
def test_gft_at_beta_one_is_the_conditional_model_and_zero_init_starts_equal():
    torch.manual_seed(0)
    base = MLPDenoiser(dim=2, hidden=32, depth=2, num_classes=4)
    gft = with_scalar_condition(base, GUIDANCE_SCALAR)
    x, sig, cond = noised_batch(n=16)
    x, sig = x.float(), sig.float()
    for s in (1.0, 2.0, 7.0):  # the zero-initialised β path: equal to the base at every scale
        torch.testing.assert_close(gft(x, sig, with_guidance_scale(cond, s, 16, "cpu")), base(x, sig, cond))
    for p in gft.parameters():  # break the zero init so the two branches differ
        p.data += 0.05 * torch.randn_like(p)
    d_c = gft_conditional(gft, x, sig, cond, torch.ones(16))
    torch.testing.assert_close(d_c, gft(x, sig, with_guidance_scale(cond, 1.0, 16, "cpu")))
    beta = draw_beta(10000, 0.25, torch.Generator().manual_seed(0))
    assert beta.min() > 0.25 - 1e-6 and beta.max() <= 1


def test_gft_loss_trains_only_the_guided_branch():
    torch.manual_seed(0)
    model = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=4, scalar_names=[GUIDANCE_SCALAR])
    x, _, cond = noised_batch(n=32)
    loss = gft_loss(model, x.float(), cond, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and model.training
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gft_optimum_is_cfg_at_inverse_beta(tmp_path):
    """Trained on the exact class-conditional suite (1,500 steps), D_s(x | c, β = 1/s) approaches the exact CFG
    denoiser at s: the error is under half the guidance term ‖D_cfg − D_c‖ (measured 0.2–0.37 at σ = 0.5, 1)."""
    from gendiv.cli import main

    main(["train", "objective=gft", "data.source=toy:conditional2d", f"run.output_dir={tmp_path}", "run.steps=1500",
          "run.progress=false", "eval.num_samples=200", "eval.num_steps=4"])
    den = GenDivPipeline.from_pretrained(str(tmp_path / "pipeline")).denoiser
    for sigma in (0.5, 1.0):
        x, sig, cond = noised_batch(n=4000, sigma=sigma, seed=7)
        with torch.no_grad():
            gft = den(x.float(), sig.float(), with_guidance_scale(cond, 2.0, 4000, "cpu")).double()
        target = ClassifierFreeGuidedDenoiser(EXACT, 2.0)(x, sig, cond)
        term = (target - EXACT(x, sig, cond)).norm(dim=1).pow(2).mean().sqrt()
        err = (gft - target).norm(dim=1).pow(2).mean().sqrt()
        assert err < 0.5 * term, (sigma, float(err), float(term))


def test_gft_unet_matches_the_diffusers_convention(tmp_path):
    """A GFT UNet2DConditionModel saved by gendiv: gendiv's pipeline at guidance_scale s equals the loop diffusers'
    pipelines run for a UNet with time_cond_proj_dim (timestep_cond = get_guidance_scale_embedding(s − 1), no CFG)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet_cfg = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[16, 32], layers_per_block=1,
                    norm_num_groups=8, down_block_types=["DownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "UpBlock2D"], mid_block_type="UNetMidBlock2D", num_class_embeds=4,
                    time_cond_proj_dim=32)
    den = UNetDenoiser(unet_class="UNet2DConditionModel", unet_config=unet_cfg, num_classes=3,
                       scalar_names=[GUIDANCE_SCALAR], c_noise_scale=1.0)
    for p in den.parameters():
        p.data += 0.02 * torch.randn_like(p)  # make the β path matter
    pipe = GenDivPipeline.from_denoiser(den)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    labels, s = torch.tensor([0, 2]), 3.0
    ours = pipe(batch_size=2, class_labels=labels, guidance_scale=s, num_inference_steps=5, output_type="pt",
                latents=torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))).images

    # the saved UNet as a plain diffusers model: its weights from gendiv's safetensors, its config as saved
    saved = GenDivPipeline.from_pretrained(str(tmp_path)).denoiser
    unet = UNet2DConditionModel.from_config(dict(saved.config.unet_config))
    unet.load_state_dict(saved.unet.state_dict())
    sched = EDMEulerScheduler.from_pretrained(tmp_path / "scheduler")
    sched.set_timesteps(5)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * sched.sigmas[0]
    emb = scalar_embedding(torch.full((2,), s - 1), unet.config.time_cond_proj_dim)
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t.expand(2), encoder_hidden_states=None, class_labels=labels,
                       timestep_cond=emb).sample
            x = sched.step(out, t, x).prev_sample
    torch.testing.assert_close(ours, (x / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="guidance_scale ≥ 1"):
        pipe(batch_size=2, guidance_scale=0.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="needs no guider"):
        pipe(batch_size=2, guider=DiffusersCFG(), num_inference_steps=2)


def test_guidance_free_objectives_from_the_command_line(tmp_path):
    from gendiv.cli import main

    main(["train", "objective=model_guidance", "data.source=toy:conditional2d", f"run.output_dir={tmp_path / 'mg'}",
          "run.steps=5", "run.progress=false", "eval.num_samples=64", "eval.num_steps=2", "guidance_free.scale=0.5"])
    base = tmp_path / "mg" / "pipeline"
    main(["train", "objective=gft", "data.source=toy:conditional2d", f"run.output_dir={tmp_path / 'ft'}", "run.steps=3",
          "run.progress=false", "eval.num_samples=64", "eval.num_steps=2", f"guidance_free.init_from={base}",
          "guidance_free.eval_guidance_scale=2"])
    ft = GenDivPipeline.from_pretrained(str(tmp_path / "ft" / "pipeline")).denoiser
    assert GUIDANCE_SCALAR in ft.config.scalar_names


@pytest.mark.parametrize("w", [0.0, 0.25, 0.5, 0.8])
def test_model_guidance_fixed_point_is_cfg_at_one_over_one_minus_w(w):
    """With the model and its EMA both equal to exact CFG at s = 1/(1 − w), the shifted prediction the loss compares
    with x₀ is the exact conditional posterior mean: its minimiser, so CFG at that s is the fixed point."""
    from gendiv.objectives.guidance_free import model_guidance_loss
    from gendiv.objectives import denoising_loss

    x, sig, cond = noised_batch(n=64)
    cfg = ClassifierFreeGuidedDenoiser(EXACT, 1 / (1 - w))
    shifted = cfg(x, sig, cond) - w * (cfg(x, sig, cond) - cfg(x, sig, cond.with_null()))
    torch.testing.assert_close(shifted, EXACT(x, sig, cond), atol=1e-9, rtol=1e-9)
    # and model_guidance_loss is the plain loss of exactly that shifted prediction
    x0 = DIST.sample(64, torch.Generator().manual_seed(3), class_labels=cond.class_labels).double()
    got = model_guidance_loss(cfg, cfg, x0, cond, w, generator=torch.Generator().manual_seed(4))
    want = denoising_loss(lambda a, s, c: EXACT(a, s, c), x0, cond, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------------------------
# review defects (issue 24) and diffusers behaviour of guiders (issue 20)
# ------------------------------------------------------------------------------------------------------------
def record_guided_sigmas(denoiser) -> list:
    """Records, via a forward pre-hook, the σ of every denoiser call that holds a null-condition (CFG negative) pass."""
    sigmas = []

    def hook(module, args, kwargs):
        sigma, cond = args[1], args[2] if len(args) > 2 else kwargs.get("cond")
        if cond is not None and cond.drop is not None and bool(cond.drop.any()):
            sigmas.append(float(torch.as_tensor(sigma).flatten()[0]))

    denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    return sigmas


def test_window_edges_on_the_schedules_own_sigmas_are_decided_by_that_sigma():
    """Edges placed exactly on scheduler.sigmas values: both interval guiders guide exactly the steps i with
    σ_lo < σ_i ≤ σ_hi (read from scheduler.sigmas), for every window of the grid (was: σ rebuilt from c_noise)."""
    pipe = _pipe()
    guided_sigmas = record_guided_sigmas(pipe.denoiser)
    n = 7
    pipe.scheduler.set_timesteps(n)
    grid = pipe.scheduler.sigmas[:n].clone()
    for a in range(1, n):
        for b in range(a):
            lo, hi = float(grid[a]), float(grid[b])  # float64 copies of float32 grid values
            want = [float(s) for s in grid if lo < float(s) <= hi]
            for guider in (SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(pipe.denoiser, 2.0), lo, hi),
                           SigmaIntervalGuider(guidance_scale=2.0, sigma_lo=lo, sigma_hi=hi)):
                guided_sigmas.clear()
                pipe(batch_size=2, class_labels=[0, 1], num_inference_steps=n, output_type="pt", guider=guider)
                assert guided_sigmas == want, (type(guider).__name__, a, b)


def test_sigma_interval_guider_whose_format_misreads_the_schedule_is_an_error():
    """Was silent: 'edm' in the reflected pipeline read σ = exp(4σ) (never in the window); 'sigma' in GenDivPipeline
    read c_noise as σ."""
    from gendiv import ReflectedDiffusionPipeline, ReflectedSDEScheduler

    pipe = _pipe()
    run = lambda p, g: p(batch_size=4, class_labels=[0, 1, 2, 0], num_inference_steps=5, output_type="pt",  # noqa: E731
                         generator=torch.Generator().manual_seed(0), guider=g).images
    with pytest.raises(ValueError, match="reads σ = .* use timestep_format='edm'"):
        run(pipe, SigmaIntervalGuider(guidance_scale=3.0, sigma_lo=0.3, sigma_hi=5.0, timestep_format="sigma"))
    torch.manual_seed(0)
    den = MLPDenoiser(dim=2, hidden=32, depth=1, num_classes=3, data_shift=0.5, data_scale=0.5)
    refl = ReflectedDiffusionPipeline(den, ReflectedSDEScheduler())
    refl.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="reads σ = .* use timestep_format='sigma'"):
        run(refl, SigmaIntervalGuider(guidance_scale=3.0, sigma_lo=0.05, sigma_hi=1.0))
    with pytest.raises(ValueError, match="holds none of the schedule's σ values"):
        run(refl, SigmaIntervalGuider(guidance_scale=3.0, sigma_lo=6.0, sigma_hi=9.0, timestep_format="sigma"))
    guided = run(refl, SigmaIntervalGuider(guidance_scale=3.0, sigma_lo=0.05, sigma_hi=1.0, timestep_format="sigma"))
    ours = run(refl, SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(den, 3.0), 0.05, 1.0))
    torch.testing.assert_close(guided, ours)
    assert not torch.allclose(guided, run(refl, None))


def test_independent_condition_guider_draws_labels_independent_of_the_batch():
    """Was a permutation of the batch's own labels: a no-op when all labels are equal (batch size 1 included)."""
    icg = IndependentConditionGuider(guidance_scale=2.0, num_classes=10, seed=1)
    icg.set_state(step=0, num_inference_steps=1, timestep=torch.tensor(1.0))
    same = torch.full((4000,), 3)
    batches = icg.prepare_inputs({"class_labels": (same, same), "drop": (torch.zeros(4000, dtype=torch.bool),) * 2})
    neg = batches[1].class_labels
    counts = torch.bincount(neg, minlength=10).double() / 4000
    assert (counts - 0.1).abs().max() < 0.025 and not batches[1].drop.any()
    one = [int(icg.prepare_inputs({"class_labels": (torch.tensor([3]),) * 2})[1].class_labels) for _ in range(40)]
    assert len(set(one)) > 5  # batch size 1: a fresh independent label per call
    pipe = _pipe()
    run = lambda g: pipe(batch_size=6, class_labels=[2] * 6, num_inference_steps=5, output_type="pt",  # noqa: E731
                         generator=torch.Generator().manual_seed(0), guider=g).images
    assert not torch.allclose(run(IndependentConditionGuider(guidance_scale=3.0)), run(None))  # num_classes: the model's
    with pytest.raises(ValueError, match="needs their range: give num_classes="):
        IndependentConditionGuider().prepare_inputs({"class_labels": (same, same)})


def test_unconditional_prior_with_fewer_classes_uses_only_its_null_output():
    """The paper's setting: a base model with fewer classes than the fine-tuned one (was: the fine-tuned model's labels
    were handed to the prior, out of its range)."""
    from gendiv import GaussianMixture

    fewer = GaussianMixture(DIST.means, DIST.variances, DIST.weights, component_class=torch.arange(8) % 2)  # 2 classes
    prior = AnalyticDenoiser(fewer)
    x, sig, cond = noised_batch(n=32)  # labels 0..3
    want = prior(x, sig) + 2.0 * (EXACT(x, sig, cond) - prior(x, sig))
    torch.testing.assert_close(UnconditionalPriorGuidedDenoiser(EXACT, prior, 2.0)(x, sig, cond), want)
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=2)
    null = Condition(class_labels=torch.zeros(32, dtype=torch.long), drop=torch.ones(32, dtype=torch.bool))
    with torch.no_grad():
        x, sig = x.float(), sig.float()
        want = net(x, sig, null) + 2.0 * (EXACT(x, sig, cond) - net(x, sig, null))
        got = UnconditionalPriorGuidedDenoiser(EXACT, net, 2.0)(x, sig, cond)
    torch.testing.assert_close(got, want)


def test_diffusers_guider_config_round_trips_keep_every_value(tmp_path):
    """Was: the parent's __init__ called positionally, so from_config/new reset guidance_scale and guidance_rescale."""
    for g in (SigmaIntervalGuider(guidance_scale=3.5, sigma_lo=0.1, sigma_hi=2.0, timestep_format="sigma",
                                  guidance_rescale=0.4, use_original_formulation=True, start=0.1, stop=0.9),
              IndependentConditionGuider(guidance_scale=4.5, guidance_rescale=0.3, seed=7, num_classes=5, start=0.2)):
        g.save_pretrained(tmp_path / type(g).__name__)
        for copy in (type(g).from_config(g.config), g.new(), type(g).from_pretrained(tmp_path / type(g).__name__)):
            settings = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
            assert settings(copy.config) == settings(g.config)
            assert (copy.guidance_scale, copy.guidance_rescale, copy.use_original_formulation, copy._start,
                    copy._stop) == (g.guidance_scale, g.guidance_rescale, g.use_original_formulation, g._start, g._stop)
        assert g.new(guidance_scale=6.0).guidance_scale == 6.0


def test_gendiv_guiders_save_and_load_guider_config_json(tmp_path):
    from gendiv.guidance import GuidedDenoiser

    weak = AnalyticDenoiser(get_distribution("conditional2d", std=0.2))
    x, sig, cond = noised_batch(n=64)
    guiders = {
        "cfg": (ClassifierFreeGuidedDenoiser(EXACT, 2.5, guidance_rescale=0.3), {}),
        "icg": (IndependentConditionGuidedDenoiser(EXACT, 2.0, seed=5), {}),
        "auto": (AutoGuidedDenoiser(EXACT, weak, 1.7), {"weak_denoiser": weak}),
        "prior": (UnconditionalPriorGuidedDenoiser(EXACT, weak, 1.5), {"prior_denoiser": weak}),
        "interval": (SigmaIntervalGuidedDenoiser(AutoGuidedDenoiser(EXACT, weak, 2.0), 0.2, 1.0),
                     {"weak_denoiser": weak}),
    }
    for name, (g, networks) in guiders.items():
        path = g.save_pretrained(tmp_path / name)
        assert path.name == "guider_config.json" and json.loads(path.read_text())["_class_name"] == type(g).__name__
        loaded = GuidedDenoiser.from_pretrained(tmp_path / name, EXACT, **networks)
        assert type(loaded) is type(g) and loaded.guider_config == g.guider_config
        by_class = type(g).from_pretrained(tmp_path / name, EXACT, **networks)
        torch.testing.assert_close(loaded(x, sig, cond), by_class(x, sig, cond))
        if name != "icg":
            torch.testing.assert_close(loaded(x, sig, cond), g(x, sig, cond))
    with pytest.raises(ValueError, match="is not a gendiv ClassifierFreeGuidedDenoiser"):
        ClassifierFreeGuidedDenoiser.from_pretrained(tmp_path / "auto", EXACT, weak_denoiser=weak)
    with pytest.raises(FileNotFoundError, match="no guider_config.json"):
        GuidedDenoiser.from_pretrained(tmp_path / "missing", EXACT)


def test_naming_old_names_are_deprecated_aliases_and_interval_is_a_guider():
    import gendiv
    import gendiv.guidance as guidance

    for old, new in guidance.DEPRECATED_NAMES.items():
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use {new}"):
            assert getattr(guidance, old) is getattr(guidance, new)
    with pytest.warns(DeprecationWarning):
        assert gendiv.ClassifierFreeGuidance is ClassifierFreeGuidedDenoiser
    interval = SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(EXACT, 2.0), 0.1, 1.0)
    assert isinstance(interval, guidance.GuidedDenoiser) and interval.guidance_scale == 2.0


def test_guider_from_config_builds_and_validates(tmp_path):
    from gendiv.guidance import guider_from_config
    from gendiv.training.config import ConfigError

    x, sig, cond = noised_batch(n=32)
    spec = {"name": "interval", "sigma_lo": 0.2, "sigma_hi": 1.0, "guider": {"name": "cfg", "guidance_scale": 3.0}}
    by_hand = SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(EXACT, 3.0), 0.2, 1.0)
    torch.testing.assert_close(guider_from_config(spec, EXACT)(x, sig, cond), by_hand(x, sig, cond))
    pipe = _pipe(num_classes=4)
    pipe.save_pretrained(tmp_path / "weak")
    auto = guider_from_config({"name": "autoguidance", "guidance_scale": 2.0, "weak_model": str(tmp_path / "weak")},
                              pipe.denoiser)
    assert isinstance(auto, AutoGuidedDenoiser) and auto.guidance_scale == 2.0
    bad = [({"name": "cfgg"}, r"guider.name must be one of \['autoguidance', 'cfg', 'classifier'"),
           ({"name": "cfg", "scale": 2}, "unknown key 'scale' in guider \\(name: cfg\\); allowed keys"),
           ({"name": "cfg", "guidance_scale": "x"}, "guidance_scale must be a finite number"),
           ({"name": "autoguidance"}, "needs 'weak_model'"),
           ({"name": "autoguidance", "weak_model": str(tmp_path / "none")}, "weak_model: expected a saved folder"),
           ({"name": "interval", "sigma_lo": 1.0}, "needs 'guider'"),
           ({"name": "interval", "guider": {"name": "cfg", "rescale": 1}}, "unknown key 'rescale' in guider.guider"),
           ([1, 2], "expected a mapping")]
    for spec, message in bad:
        with pytest.raises(ConfigError, match=message):
            guider_from_config(spec, EXACT)
