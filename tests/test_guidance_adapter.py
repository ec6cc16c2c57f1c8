"""Adapter guidance distillation (docs/guidance.md §6): a one-pass adapter on a frozen teacher trained to give its
two-pass CFG prediction on CFG trajectories. Truths: the exact class-conditional suite (conditional2d), whose CFG
denoiser is closed form; the Euler identities of the trajectory pool; and a tiny random Stable Diffusion-shaped
teacher, whose adapter must move its one-pass output toward the two-pass CFG output in a few steps."""
import json
import statistics
import subprocess
import sys

import pytest
import torch

from gendiv import GenDivPipeline, testing
from gendiv.condition import Condition, with_guidance_scale
from gendiv.guidance import ClassifierFreeGuidedDenoiser, LoraGuidanceAdapter, ResidualGuidanceAdapter
from gendiv.guidance.adapter import cfg_prediction
from gendiv.models.teachers import load_teacher
from gendiv.sampling import sample, sample_euler
from gendiv.space import karras_sigmas
from gendiv.toy import AnalyticDenoiser, get_distribution, sliced_wasserstein2
from gendiv.training import ConfigError, load_config
from gendiv.training.guidance_adapter import (GuidanceAdapterConfig, GuidanceAdapterTrainer, TrajectorySection,
                                              cfg_trajectories, guidance_gaps)

DIST = get_distribution("conditional2d")
PROMPTS = ["a cat", "a dog", "a red house"]


def _config(tmp, *overrides):
    return load_config(GuidanceAdapterConfig, None, [f"run.output_dir={tmp}", "run.progress=false", *overrides])


def _labels(n):
    return Condition(class_labels=torch.arange(n) % DIST.num_classes)


def _guided(adapter, s):
    """The adapter as a plain denoiser at scale s (what a pipeline calls with guidance_scale=s)."""
    return lambda x, sigma, cond: adapter(x, sigma, with_guidance_scale(cond, s, len(x), x.device))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("agd") / "run"
    trainer = GuidanceAdapterTrainer(_config(out, "run.steps=1500", "trajectories.pool=1024"))
    trainer.fit()
    return trainer, out


def _held_out(s, n=256, seed=11):
    section = TrajectorySection(scale_min=s, scale_max=s, pool=n)
    return cfg_trajectories(AnalyticDenoiser(DIST), _labels(n), torch.full((n,), s), (n, 2), section,
                            torch.Generator().manual_seed(seed), "cpu")


# -- identities ------------------------------------------------------------------------------------------------
def test_cfg_prediction_is_the_two_pass_guider_per_sample():
    teacher, x, sigma = AnalyticDenoiser(DIST), torch.randn(8, 2), torch.full((8,), 0.7)
    cond, scale = _labels(8), torch.tensor([1.0, 2.0, 3.5, 5.0] * 2)
    got = cfg_prediction(teacher, x, sigma, cond, scale)
    for i, s in enumerate(scale.tolist()):
        want = ClassifierFreeGuidedDenoiser(teacher, s)(x[i:i + 1], sigma[i:i + 1], cond.index(slice(i, i + 1)))
        torch.testing.assert_close(got[i:i + 1], want)


def test_residual_adapter_is_cfg_where_cfg_is_the_teacher():
    """At s = 1 and for unconditional samples CFG is the teacher's own pass; the adapter is too, whatever its weights
    (and everywhere while untrained: its output layer starts at zero)."""
    teacher = AnalyticDenoiser(DIST)
    adapter = ResidualGuidanceAdapter.for_teacher(teacher)
    x, sigma, cond = torch.randn(16, 2), torch.rand(16) * 3 + 0.01, _labels(16)
    torch.testing.assert_close(_guided(adapter, 4.0)(x, sigma, cond), teacher(x, sigma, cond))  # untrained
    torch.nn.init.normal_(adapter.out[-1].weight)
    torch.testing.assert_close(_guided(adapter, 1.0)(x, sigma, cond), teacher(x, sigma, cond))
    dropped = cond.with_null()
    torch.testing.assert_close(_guided(adapter, 4.0)(x, sigma, dropped), teacher(x, sigma, dropped))
    assert (_guided(adapter, 4.0)(x, sigma, cond) - teacher(x, sigma, cond)).abs().max() > 1e-3


def test_trajectory_pool_holds_the_cfg_euler_path():
    """Consecutive pool states are Euler steps of the exact CFG ODE, and the last target is the sampler's output."""
    s, n, steps = 3.0, 32, 6
    section = TrajectorySection(scale_min=s, scale_max=s, num_steps=steps, pool=n)
    pool = cfg_trajectories(AnalyticDenoiser(DIST), _labels(n), torch.full((n,), s), (n, 2), section,
                            torch.Generator().manual_seed(0), "cpu")
    x, sigma, target = (t.view(steps, n, -1) for t in (pool.x, pool.sigma[:, None], pool.target))
    exact = ClassifierFreeGuidedDenoiser(AnalyticDenoiser(DIST), s)
    sigmas = karras_sigmas(steps)
    for i in range(steps):
        torch.testing.assert_close(target[i], exact(x[i], sigma[i, :, 0], _labels(n)))
        nxt = x[i] + (x[i] - target[i]) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        if i + 1 < steps:
            torch.testing.assert_close(x[i + 1], nxt)
    z = torch.randn((n, 2), generator=torch.Generator().manual_seed(0)) * sigmas[0]
    torch.testing.assert_close(sample_euler(exact, z, sigmas, _labels(n)), nxt)


# -- the exact suite -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [1.5, 3.0, 4.5])
def test_one_pass_prediction_approaches_two_pass_cfg(trained, s):
    trainer, _ = trained
    gaps = guidance_gaps(trainer.adapter, trainer.teacher, _held_out(s))
    assert gaps["rms_gap_adapter"] < 0.1
    assert gaps["rms_gap_adapter"] < gaps["rms_gap_conditional"] / 3


def _modes(x):
    return torch.cdist(x.double(), DIST.means).argmin(1)


def _mode_shapes_w2(x, ref):
    """Sliced W₂ per mode (samples grouped by nearest mode), mean over modes: a class has two antipodal modes, and a
    sample landing in the other one than its twin would otherwise dominate W₂ (mode weights are checked apart)."""
    mx, mr = _modes(x), _modes(ref)
    return statistics.fmean(sliced_wasserstein2(x[mx == k], ref[mr == k]) for k in range(len(DIST.means)))


@pytest.mark.parametrize("s", [2.5, 4.0])
def test_one_pass_samples_match_two_pass_cfg_samples_and_the_untrained_adapter_does_not(trained, s):
    trainer, _ = trained
    n, cond = 2000, _labels(2000)
    untrained = ResidualGuidanceAdapter.for_teacher(trainer.teacher)

    def draw(den):
        with torch.no_grad():
            return sample(den, (n, 2), num_steps=18, sampler="euler", cond=cond,
                          generator=torch.Generator().manual_seed(3))

    cfg = draw(ClassifierFreeGuidedDenoiser(trainer.teacher, s))
    one_pass, control = draw(_guided(trainer.adapter, s)), draw(_guided(untrained, s))
    threshold = 0.04
    assert _mode_shapes_w2(one_pass, cfg) < threshold < _mode_shapes_w2(control, cfg)
    weights = lambda x: _modes(x).bincount(minlength=len(DIST.means)).double() / n  # noqa: E731
    assert 0.5 * (weights(one_pass) - weights(cfg)).abs().sum() < 0.04  # mode weights within 4% of the mass


def test_exported_pipeline_samples_in_a_fresh_process_at_one_pass_per_step(trained, tmp_path):
    _, out = trained
    script = f"""
import json, sys, torch
from gendiv import load_pipeline
pipe = load_pipeline({str(out / "pipeline")!r})
rows = []
pipe.denoiser.base.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
x = pipe(batch_size=8, class_labels=[0, 1, 2, 3] * 2, guidance_scale=3.0, num_inference_steps=5, output_type="pt",
         generator=torch.Generator().manual_seed(0)).images
json.dump({{"x": x.tolist(), "rows": rows}}, sys.stdout)
"""
    got = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    assert got["rows"] == [8] * 5  # one teacher pass per step, no doubled CFG batch
    pipe = GenDivPipeline.from_pretrained(str(out / "pipeline"))
    want = pipe(batch_size=8, class_labels=[0, 1, 2, 3] * 2, guidance_scale=3.0, num_inference_steps=5,
                output_type="pt", generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(torch.tensor(got["x"], dtype=want.dtype), want)


def test_resume_retrains_on_the_same_pools(tmp_path):
    common = ["run.steps=12", "run.batch_size=32", "trajectories.pool=16", "trajectories.num_steps=4",
              "trajectories.refresh_every=5", "run.checkpoint_every=4"]
    straight = GuidanceAdapterTrainer(_config(tmp_path / "a", *common))
    straight.fit()
    GuidanceAdapterTrainer(_config(tmp_path / "b", *common, "run.stop_after=8")).fit()
    resumed = GuidanceAdapterTrainer(_config(tmp_path / "b", *common, "run.resume=true"))
    resumed.fit()
    for (name, p), q in zip(straight.adapter.state_dict().items(), resumed.adapter.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


# -- configuration ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("trajectories.scale_min=0.5", r"1 ≤ scale_min ≤ scale_max"),
    ("trajectories.sampler=dpm", r"trajectories.sampler must be one of"),
    ("teacher.guidance_scale=3", r"set trajectories.scale_min and trajectories.scale_max instead"),
    ("adapter.kind=big", r"adapter.kind must be auto, residual or lora"),
    ("adapter.depht=2", r"adapter"),
])
def test_bad_config_is_one_clear_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        _config(tmp_path, override)
    assert "\n" not in str(err.value)


def test_unconditional_teacher_and_mismatched_adapter_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unconditional"):
        GuidanceAdapterTrainer(_config(tmp_path / "a", "teacher.source=analytic:ring8_imbalanced"))
    with pytest.raises(ConfigError, match="adapter.kind=lora"):
        GuidanceAdapterTrainer(_config(tmp_path / "b", "adapter.kind=lora"))


# -- a tiny Stable Diffusion-shaped text teacher ------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_sd") / "pipe"
    testing.tiny_text_to_image_pipeline().save_pretrained(path)
    return path


def test_text_teacher_adapter_moves_toward_two_pass_cfg_and_reloads_in_a_fresh_process(sd_folder, tmp_path):
    cfg = _config(tmp_path / "run", f"teacher.source={sd_folder}", f"teacher.prompts={json.dumps(PROMPTS)}",
                  "run.steps=60", "run.batch_size=8", "run.mixed_precision=no", "trajectories.pool=16",
                  "trajectories.num_steps=4", "trajectories.scale_min=2", "trajectories.scale_max=4", "adapter.rank=4")
    trainer = GuidanceAdapterTrainer(cfg)
    assert isinstance(trainer.adapter, LoraGuidanceAdapter)
    assert trainer.section.sigma_max < 80  # narrowed to the VP teacher's range
    before = trainer.evaluate(final=False)
    assert before["rms_gap_adapter"] == pytest.approx(before["rms_gap_conditional"])  # untrained = conditional
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = Condition(text_embeds=trainer.prompt_embeds[:2])
    teacher_before = trainer.teacher(x, torch.full((2,), 2.0), cond)
    trainer.fit()
    after = trainer.evaluate(final=True)
    for gap in ("rms_gap_adapter", "weighted_gap_adapter"):  # held-out trajectories, x̂₀ and loss weighting
        assert after[gap] < 0.95 * before[gap]
    torch.testing.assert_close(trainer.teacher(x, torch.full((2,), 2.0), cond), teacher_before)  # base frozen
    want = _guided(trainer.adapter, 3.0)(x, torch.full((2,), 2.0), cond)
    torch.save({"x": x, "text": cond.text_embeds}, tmp_path / "inputs.pt")
    script = f"""
import torch
from gendiv.condition import Condition, with_guidance_scale
from gendiv.guidance import LoraGuidanceAdapter
from gendiv.models.teachers import load_teacher
teacher = load_teacher({str(sd_folder)!r})[0]
adapter = LoraGuidanceAdapter.from_pretrained({str(tmp_path / "run" / "adapter")!r}, teacher)
inp = torch.load({str(tmp_path / "inputs.pt")!r})
cond = with_guidance_scale(Condition(text_embeds=inp["text"]), 3.0, 2, "cpu")
with torch.no_grad():
    torch.save(adapter(inp["x"], torch.full((2,), 2.0), cond), {str(tmp_path / "out.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), want.detach())


def test_text_adapter_samples_at_one_unet_pass_per_step(sd_folder):
    teacher = load_teacher(str(sd_folder))[0]
    adapter = LoraGuidanceAdapter(teacher)
    rows = []
    teacher.unet.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    cond = Condition(text_embeds=torch.randn(3, 16, 32))
    with torch.no_grad():
        sample_euler(_guided(adapter, 4.0), torch.randn(3, 4, 8, 8) * 14, karras_sigmas(5, 0.03, 14.0), cond)
        assert rows == [3] * 5
        rows.clear()
        sample_euler(ClassifierFreeGuidedDenoiser(teacher, 4.0), torch.randn(3, 4, 8, 8) * 14,
                     karras_sigmas(5, 0.03, 14.0), cond)
    assert rows == [6] * 5  # two-pass CFG: conditional and empty-prompt rows in one batch


def test_command_line_runs_the_shipped_config(tmp_path, capsys):
    from pathlib import Path

    from gendiv.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "guidance_adapter_conditional2d.yaml"
    main(["guidance-adapter", "--config", str(config), f"run.output_dir={tmp_path}", "run.steps=3",
          "trajectories.pool=8", "run.progress=false"])
    assert (tmp_path / "pipeline" / "model_index.json").is_file() and "rms_gap_adapter" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["guidance-adapter", f"run.output_dir={tmp_path / 'b'}", "trajectories.scale_max=0.5"])
    assert err.value.code == 2
