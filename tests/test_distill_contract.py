"""The distillation contract v2 (gendiv/distill/contract.py): methods own their updates, the trainer runs them.

A method written in this file, as a new contributor would, trains through the unchanged trainer; every option of
every method changes something the run reads; choosing a method by name gives its own defaults; bad method sections
are one clear line each; and the two numerical review fixes of the contract issue hold.
"""
import json
import math
from typing import Literal

import pytest
import torch
from pydantic import Field

from gendiv.distill import METHODS, STUDENT, DistillMethod, Update, h_derivatives, get_divergence, smt_pseudo_gradient
from gendiv.distill.options import MethodOptions, Options
from gendiv.training import ConfigError, DistillConfig, load_config
from gendiv.training.distill import DistillTrainer

from .option_reads import unread_options

FAST = ["run.progress=false", "run.log_every=1", "run.batch_size=32", "eval.num_samples=100", "eval.teacher_steps=3",
        "student.model.hidden=16", "student.model.depth=1", "student.discriminator_hidden=16", "run.steps=4"]


def _cfg(tmp_path, *overrides):
    return load_config(DistillConfig, None, [f"run.output_dir={tmp_path}", *FAST, *overrides])


# -------------------------------------------------------------------------------------------------
# A new method, written against the contract alone
# -------------------------------------------------------------------------------------------------
class TeacherRegressionOptions(MethodOptions):
    name: Literal["test_teacher_regression"] = "test_teacher_regression"
    target_decay: float = Field(0.5, ge=0, lt=1)


class TeacherRegression(DistillMethod):
    """Regress the student's one-step output onto the teacher's denoising of the same noised sample, with a frozen
    EMA copy of the student as an extra (unused-for-gradients) target: no auxiliary network, one update a step."""

    name = "test_teacher_regression"
    Options = TeacherRegressionOptions

    def networks(self, factory):
        self.target = __import__("copy").deepcopy(factory.student).requires_grad_(False)  # method-held, frozen
        return {}

    def state_modules(self):
        return {"target": self.target}

    def updates(self):
        return (Update("student", (STUDENT,)),)

    def schedule(self, step):
        return ("student",)

    def loss(self, update, nets, draws):
        z, cond = draws.latents(draws.batch_size), draws.condition(draws.batch_size)
        x = nets[STUDENT](z, cond).float()
        sigma = draws.sigma("generator", x.shape[0])
        with torch.no_grad():
            x_sigma = x + sigma[:, None] * draws.randn_like(x)
            target = draws.teacher(x_sigma, sigma, cond)
        loss = (x - target).pow(2).mean()
        return loss, {"regression_loss": float(loss.detach())}

    def after_update(self, update, nets, draws):
        with torch.no_grad():
            for pt, ps in zip(self.target.parameters(), nets[STUDENT].parameters()):
                pt.lerp_(ps.to(pt.device), 1 - self.options.target_decay)


def test_a_new_method_trains_through_the_unchanged_trainer(tmp_path):
    trainer = DistillTrainer(_cfg(tmp_path, "method={name: test_teacher_regression, target_decay: 0.9}"))
    forwards = [0]
    trainer.unwrapped[STUDENT].register_forward_hook(lambda *a: forwards.__setitem__(0, forwards[0] + 1))
    target_before = [p.clone() for p in trainer.method.target.parameters()]
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["regression_loss"] for r in rows if "regression_loss" in r]
    assert len(losses) == 4  # no warm-up: the student learns from step 1 (no auxiliary network to warm up)
    # one student forward per step (trap: a G(z) drawn up front and never used); evaluation uses the EMA copy
    assert forwards[0] == 4
    # the method's frozen EMA target stayed frozen (trap: the trainer re-enabling gradients on every network)
    assert not any(p.requires_grad for p in trainer.method.target.parameters())
    # ...yet it followed the student (by more than round-off: 4 EMA steps of a learning student)
    assert max((a - b).abs().max().item() for a, b in zip(target_before, trainer.method.target.parameters())) > 1e-6
    assert (tmp_path / "checkpoints" / "step-00000004" / "state_target.safetensors").is_file()


def test_methods_register_themselves_and_every_family_module_is_imported():
    import importlib
    import pkgutil

    import gendiv.distill as package

    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"gendiv.distill.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, DistillMethod) and obj.__dict__.get("name"):
                assert METHODS[obj.name] is obj
                assert obj.Options.model_fields["name"].default == obj.name  # the typed section's tag is the name
    with pytest.raises(TypeError, match="two distillation methods are named 'dmd'"):
        type("AnotherDMD", (DistillMethod,), {"name": "dmd"})


# -------------------------------------------------------------------------------------------------
# Every option is read
# -------------------------------------------------------------------------------------------------
# settings that switch on every optional branch, so each option has a chance to be read
EVERYTHING = {
    "diff_instruct": [], "dmd": ["method.regression.weight=0.5", "method.regression.pairs=8"],
    "dmd2": ["method.regression.weight=0.5", "method.regression.pairs=8"],
    "f_distill": ["method.regression.weight=0.5", "method.regression.pairs=8"],
    "sid": [], "sida": [], "smd": [], "uni_instruct": ["method.ratio.sigma_bins=4", "method.divergence_schedule=[[2, js]]"],
    "smt": ["teacher.source=none", "data.source=toy:ring8_imbalanced"],
}


@pytest.mark.parametrize("name", sorted(EVERYTHING))
def test_every_option_of_every_method_is_read(name, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, f"method.name={name}", "method.fake_warmup_steps=1",
               "method.fake_updates_per_generator_update=1", "method.reuse_generator_samples=true", *EVERYTHING[name])
    unread = unread_options(cfg.method, lambda: DistillTrainer(cfg).fit(), monkeypatch)
    assert not unread, f"{name} accepts options it never reads: {sorted(unread)}"


def test_an_option_no_method_reads_is_caught(tmp_path, monkeypatch):
    """The check above can fail: an option added to a method's section and never read is reported."""

    class Leaky(TeacherRegressionOptions):
        name: Literal["test_leaky"] = "test_leaky"
        ignored: float = 1.0

    class LeakyMethod(TeacherRegression):
        name = "test_leaky"
        Options = Leaky

    try:
        cfg = _cfg(tmp_path, "method={name: test_leaky}")
        reads = set()
        monkeypatch.setattr(Options, "__getattribute__",
                            lambda self, item: (reads.add(item) if item in type(self).model_fields else None,
                                                object.__getattribute__(self, item))[1])
        DistillTrainer(cfg).fit()
        monkeypatch.undo()
        assert "target_decay" in reads and "ignored" not in reads
    finally:
        METHODS.pop("test_leaky", None)


# -------------------------------------------------------------------------------------------------
# Choosing a method, its defaults, and bad sections
# -------------------------------------------------------------------------------------------------
def test_choosing_a_method_by_name_gives_its_own_defaults():
    assert load_config(DistillConfig, None, []).method.fake_updates_per_generator_update == 2  # the ring's f-distill
    sid = load_config(DistillConfig, None, ["method.name=sid"]).method
    assert sid.name == "sid" and sid.fake_updates_per_generator_update == 1 and sid.alpha == 1.2
    dmd2 = load_config(DistillConfig, None, ["method.name=dmd2"]).method
    assert dmd2.fake_updates_per_generator_update == 5 and dmd2.gan.weight_gen == 3e-3
    # other keys given with the name are kept, whatever their order on the command line
    assert load_config(DistillConfig, None, ["method.alpha=1.0", "method.name=sid"]).method.alpha == 1.0
    # a σ sampler chosen by kind gets that kind's defaults
    s = load_config(DistillConfig, None, ["sigma_fake.kind=karras_index", "sigma_fake.min_index=3"]).sigma_fake
    assert (s.kind, s.min_index, s.max_index) == ("karras_index", 3, 980)


@pytest.mark.parametrize("overrides, message", [
    (["method.gan_weight_gen=1"], r"method\.gan_weight_gen: unknown option for f_distill; did you mean method\.gan\.weight_gen"),
    (["method.name=smd", "method.regression.weight=1"], r"method\.regression: unknown option for smd"),
    (["method.alpha=x", "method.name=sid"], r"method\.alpha: .*valid number"),
    (["method.gan.weight_gen=-1"], r"method\.gan\.weight_gen: .*greater than or equal to 0"),
    (["method.name=cd_nope"], r"method\.name: unknown 'cd_nope'; choose one of"),
    (["method.fake_warmup_steps=10", "run.steps=5"], r"method\.fake_warmup_steps \(10\) ≥ run\.steps \(5\)"),
    (["method.fake_warmup_steps=5", "run.steps=5"], r"never be updated"),
    (["optim.fake_warmup_steps=3"], r"it moved to method\.fake_warmup_steps"),
    (["sigma_fake.kind=lognormal", "sigma_fake.p_std=0"], r"sigma_fake\.p_std: .*greater than 0"),
    (["sigma_generator.kind=karras_index", "sigma_generator.min_index=5000"], r"sigma_generator: need 0 ≤ min_index"),
    (["sigma_generator.kind=lognormal", "sigma_generator.min_index=3"], r"sigma_generator\.min_index: unknown option"),
    (["method.ratio.logit_clamp=.inf"], r"method\.ratio\.logit_clamp: .*finite"),
    (["method.divergence=nope"], r"method\.divergence: unknown divergence 'nope'"),
])
def test_bad_method_sections_are_one_clear_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(DistillConfig, None, overrides)
    assert "\n" not in str(err.value)


def test_a_schedule_with_no_update_and_unknown_learning_rates_are_refused(tmp_path):
    class Idle(TeacherRegression):
        name = "test_idle"
        Options = type("IdleOptions", (TeacherRegressionOptions,),
                       {"__annotations__": {"name": Literal["test_idle"]}, "name": "test_idle"})

        def schedule(self, step):
            return ()

    try:
        with pytest.raises(ConfigError, match="its schedule runs no update at step 0"):
            DistillTrainer(_cfg(tmp_path / "a", "method={name: test_idle}"))
    finally:
        METHODS.pop("test_idle", None)
    with pytest.raises(ConfigError, match=r"optim\.lr\.critic: method f_distill has no network 'critic'"):
        DistillTrainer(_cfg(tmp_path / "b", "optim.lr={critic: 1e-3}", "method.fake_warmup_steps=1"))


# -------------------------------------------------------------------------------------------------
# Review fixes carried by the contract issue
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rms", [1.0, 1e-3, 1e-4, 1e-6])
def test_adaptive_smt_step_is_dmds_at_alpha_one_at_every_scale(rms):
    """At α = 1, g = (p_1 − p_0)/mean|p_1|: DMD's normalised step, with no constant that dominates near convergence."""
    g = torch.Generator().manual_seed(0)
    x, f0 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    f1 = f0 + rms * torch.randn(8, 2, generator=g)
    got = smt_pseudo_gradient(x, f0, f1, f1, torch.ones(8), adaptive=True)
    p0, p1 = x - f0, x - f1
    want = (p1 - p0) / p1.abs().mean(1, keepdim=True)
    # x − f rounds at ~1e-7 (|x| ~ 1), a share ~1e-7/rms of the difference p₁ − p₀: allowed (at 1e-6 that is 1% of the
    # step's scale), far below what a wrong constant or normalisation would move (O(1) of it)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8 / rms * want.abs().max().item())


def test_uni_instruct_scaled_derivatives_stay_finite_where_h_double_prime_overflows():
    """Squared Hellinger: h = √r/2, r·h' = √r/4, r²·h'' = −√r/8 — finite (→ 0) at r = 1e-250, where h'' is −∞."""
    r = torch.tensor([1e-250, 1e-30, 0.5, 1.0, 7.0], dtype=torch.float64)
    h, rh1, r2h2 = h_derivatives(get_divergence("squared_hellinger"), r)
    torch.testing.assert_close(h, r.sqrt() / 2)
    torch.testing.assert_close(rh1, r.sqrt() / 4)
    torch.testing.assert_close(r2h2, -r.sqrt() / 8)
    for name in ("jensen_shannon", "forward_kl", "reverse_kl", "alpha:0.5"):  # against the closed forms' derivatives
        div = get_divergence(name)
        rr = torch.linspace(0.2, 5, 7, dtype=torch.float64).requires_grad_()
        (d1,) = torch.autograd.grad((div.h(rr) + 0 * rr).sum(), rr, create_graph=True)
        (d2,) = torch.autograd.grad((d1 + 0 * rr).sum(), rr)
        h, rh1, r2h2 = h_derivatives(div, rr.detach())
        torch.testing.assert_close(rh1, rr.detach() * d1.detach())
        torch.testing.assert_close(r2h2, rr.detach() ** 2 * d2)
    assert math.isfinite(float(r2h2.sum()))


# -------------------------------------------------------------------------------------------------
# The teacher as methods see it: any guider from the config; a resume checks the teacher's content
# -------------------------------------------------------------------------------------------------
def test_teacher_guider_from_the_config_is_what_methods_call(tmp_path):
    from gendiv.condition import Condition
    from gendiv.guidance import ClassifierFreeGuidedDenoiser, SigmaIntervalGuidedDenoiser

    guider = "{name: interval, sigma_lo: 0.5, sigma_hi: 5.0, guider: {name: cfg, guidance_scale: 3.0}}"
    trainer = DistillTrainer(_cfg(tmp_path, "teacher.source=analytic:conditional2d", f"teacher.guider={guider}",
                                  "method.name=dmd", "method.fake_warmup_steps=1"))
    guided = trainer.guided_teacher
    assert isinstance(guided, SigmaIntervalGuidedDenoiser)
    x, cond = torch.randn(6, 2), Condition(class_labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    cfg3 = ClassifierFreeGuidedDenoiser(trainer.teacher, 3.0)
    torch.testing.assert_close(guided(x, torch.full((6,), 1.0), cond), cfg3(x, torch.full((6,), 1.0), cond))
    torch.testing.assert_close(guided(x, torch.full((6,), 20.0), cond), trainer.teacher(x, torch.full((6,), 20.0), cond))
    assert not torch.allclose(cfg3(x, torch.full((6,), 1.0), cond), trainer.teacher(x, torch.full((6,), 1.0), cond))
    trainer.fit()
    with pytest.raises(ConfigError, match="teacher.guidance_scale and teacher.guider exclude each other"):
        _cfg(tmp_path / "b", "teacher.guidance_scale=2", f"teacher.guider={guider}")
    with pytest.raises(ConfigError, match=r"teacher\.guider\.name must be one of"):
        DistillTrainer(_cfg(tmp_path / "c", "teacher.source=analytic:conditional2d", "teacher.guider={name: nope}",
                            "method.fake_warmup_steps=1"))


def test_resume_refuses_a_teacher_folder_retrained_in_place(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from gendiv.training import CheckpointError

    def save_teacher(seed):
        torch.manual_seed(seed)
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                           norm_num_groups=4)
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler(clip_sample=False)).save_pretrained(tmp_path / "teacher")

    save_teacher(0)
    args = [f"teacher.source={tmp_path / 'teacher'}", "method.name=dmd", "method.fake_warmup_steps=0", "run.batch_size=2",
            "run.steps=3", "run.checkpoint_every=1", "run.stop_after=1", "eval.num_samples=2"]
    from gendiv.training import distill

    distill(_cfg(tmp_path / "run", *args))
    save_teacher(1)  # retrained in place: same path, other weights
    with pytest.raises(CheckpointError, match="teacher.source"):
        distill(_cfg(tmp_path / "run", *args, "run.resume=true"))
