"""Every gendiv pipeline and box scheduler behaves as diffusers' own do (issue #20): per-sample generator lists,
step-end callbacks, output types, saved folders that stock ``DiffusionPipeline.from_pretrained`` loads in a fresh
process, dtype moves, custom σ grids through ``retrieve_timesteps``, ``compatibles``, memory switches."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import EDMEulerScheduler
from diffusers.models.attention_processor import SlicedAttnProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

from gendiv import GenDivPipeline, MLPDenoiser, load_pipeline
from gendiv.schedulers import ReflectedODEScheduler, ReflectedSDEScheduler, ThresholdedSDEScheduler
from gendiv.testing import tiny_gendiv_pipelines

BOX_SCHEDULERS = [ReflectedSDEScheduler, ReflectedODEScheduler, ThresholdedSDEScheduler]
NAMES = ["GenDivPipeline", "OneStepPipeline", "ReflectedDiffusionPipeline", "OneStepTextToImagePipeline"]
MULTI_STEP = ["GenDivPipeline", "OneStepPipeline", "ReflectedDiffusionPipeline"]  # OneStep: with re-noise steps
# per pipeline: the call that makes a batch of three, and the call that makes its i-th sample alone
PROMPTS = ["a red circle", "two squares", "digit 7"]
STEPS = {"GenDivPipeline": {"num_inference_steps": 4}, "OneStepPipeline": {"renoise_sigmas": [1.0, 0.3]},
         "ReflectedDiffusionPipeline": {"num_inference_steps": 4}, "OneStepTextToImagePipeline": {}}


@pytest.fixture(scope="module")
def pipes():
    return tiny_gendiv_pipelines()


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def batch_call(name, n=3):
    size = {"prompt": PROMPTS[:n]} if name == "OneStepTextToImagePipeline" else {"batch_size": n}
    return {**STEPS[name], **size}


def single_call(name, i):
    size = {"prompt": PROMPTS[i]} if name == "OneStepTextToImagePipeline" else {"batch_size": 1}
    return {**STEPS[name], **size}


def images(pipe, **kwargs):
    return pipe(output_type="pt", **kwargs).images


@pytest.mark.parametrize("name", NAMES)
def test_sample_of_a_batch_equals_the_sample_made_alone_with_its_generator(pipes, name):
    """diffusers' per-sample seeding: random labels, prior, initial noise and every stochastic step (SDE-DPM-Solver++,
    reflected SDE, re-noising) of sample i come from generator i only."""
    batch = images(pipes[name], generator=gens(10, 11, 12), **batch_call(name))
    assert batch.shape[0] == 3
    for i in range(3):
        alone = images(pipes[name], generator=gens(10 + i)[0], **single_call(name, i))
        torch.testing.assert_close(batch[i:i + 1], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(batch[0], batch[1])  # the generators really differ


@pytest.mark.parametrize("name", NAMES)
def test_a_generator_list_of_the_wrong_length_is_named(pipes, name):
    with pytest.raises(ValueError, match="generator list has 2 generators for a batch of 3"):
        images(pipes[name], generator=gens(0, 1), **batch_call(name))
    with pytest.raises(ValueError, match="generator must be a torch.Generator or a list"):
        images(pipes[name], generator=[0, 1, 2], **batch_call(name))


@pytest.mark.parametrize("name", ["GenDivPipeline", "OneStepPipeline", "ReflectedDiffusionPipeline"])
def test_num_images_per_prompt_repeats_each_class_label(pipes, name):
    """labels [0, 2] × 2 images each = the four samples made alone with labels 0, 0, 2, 2 and their generators."""
    kwargs = {k: v for k, v in batch_call(name).items() if k != "batch_size"}
    batch = images(pipes[name], batch_size=2, class_labels=[0, 2], num_images_per_prompt=2, generator=gens(1, 2, 3, 4),
                   **kwargs)
    alone = torch.cat([images(pipes[name], batch_size=1, class_labels=label, generator=gens(seed)[0], **kwargs)
                       for label, seed in zip([0, 0, 2, 2], [1, 2, 3, 4])])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_output_types_and_return_dict(pipes, name):
    pipe, kwargs = pipes[name], batch_call(name, 2)
    pt = images(pipe, generator=gens(0, 1), **kwargs)
    arr = pipe(output_type="np", generator=gens(0, 1), **kwargs).images
    pil = pipe(generator=gens(0, 1), **kwargs).images
    tup = pipe(output_type="pt", return_dict=False, generator=gens(0, 1), **kwargs)
    assert isinstance(tup, tuple) and len(tup) == 1
    torch.testing.assert_close(tup[0], pt)
    np.testing.assert_allclose(arr, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert len(pil) == 2 and pil[0].size == tuple(pt.shape[-1:-3:-1])
    np.testing.assert_allclose(np.asarray(pil[1]), (arr[1] * 255).round().astype(np.uint8).squeeze(), atol=1)


@pytest.mark.parametrize("name", MULTI_STEP)
def test_step_end_callback_sees_every_step_and_replaces_latents(pipes, name):
    pipe, kwargs = pipes[name], batch_call(name, 2)
    seen = []

    def record(p, i, t, tensors):
        seen.append((i, float(t), tensors["latents"].shape))
        return {}

    plain = images(pipe, generator=gens(0, 1), **kwargs)
    same = images(pipe, generator=gens(0, 1), callback_on_step_end=record, **kwargs)
    torch.testing.assert_close(same, plain, atol=1e-6, rtol=0)  # returning nothing changes nothing (to round-off)
    assert [i for i, _, _ in seen] == list(range(pipe.num_timesteps)) and len(seen) > 1
    assert all(shape == seen[0][2] for _, _, shape in seen)

    def zero_at_end(p, i, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"]) if i == p.num_timesteps - 1 else tensors["latents"]}

    out = images(pipe, generator=gens(0, 1), callback_on_step_end=zero_at_end, **kwargs)
    # the final sample is 0: [-1, 1] data shows 0.5; reflected models live in [0, 1], whose 0 shows as 0
    torch.testing.assert_close(out, torch.full_like(out, 0.0 if name.startswith("Reflected") else 0.5))
    with pytest.raises(ValueError, match="not tensors of"):
        images(pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"], **kwargs)


def test_reflected_latents_are_the_starting_sample(pipes):
    """The deterministic reflected ODE from given latents = the same run from the prior drawn with the same seed."""
    pipe = pipes["ReflectedDiffusionPipeline"]
    ode = type(pipe)(pipe.denoiser, ReflectedODEScheduler())
    ode.set_progress_bar_config(disable=True)
    start = ode.scheduler.prior_sample((2, 1, 8, 8), gens(7)[0])
    kwargs = {"batch_size": 2, "class_labels": [1, 2], "num_inference_steps": 5}
    torch.testing.assert_close(images(ode, latents=start, **kwargs), images(ode, generator=gens(7)[0], **kwargs))
    with pytest.raises(ValueError, match="latents lies outside the declared box"):
        images(ode, latents=start + 2, **kwargs)
    with pytest.raises(ValueError, match="latents must have shape"):
        images(ode, latents=start[:1], **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_pipeline_runs_and_stays_near_float32(pipes, name):
    pipe, kwargs = pipes[name], batch_call(name, 2)
    ref = images(pipe, generator=gens(0, 1), **kwargs)
    try:
        pipe.to(torch.bfloat16)
        low = images(pipe, generator=gens(0, 1), **kwargs)
    finally:
        pipe.to(torch.float32)
    assert torch.isfinite(low).all() and (low.float() - ref).abs().mean() < 0.02


def test_text_pipeline_height_width(pipes):
    pipe = pipes["OneStepTextToImagePipeline"]
    assert pipe.vae_scale_factor == 2 and images(pipe, prompt="ab").shape == (1, 3, 16, 16)
    torch.testing.assert_close(images(pipe, prompt="ab", height=16, width=16, generator=gens(3)[0]),
                               images(pipe, prompt="ab", generator=gens(3)[0]))
    with pytest.raises(ValueError, match="multiples of the VAE's scale factor 2, got 15×16"):
        images(pipe, prompt="ab", height=15)
    assert images(pipe, prompt="ab", height=24, width=8).shape == (1, 3, 24, 8)  # the student is convolutional
    with pytest.raises(ValueError, match="multiples of 2"):  # latents 9×4: the UNet cannot halve 9
        images(pipe, prompt="ab", height=18, width=8)


def test_attention_slicing_reaches_the_nested_unet_or_says_it_does_not_apply(pipes):
    text = pipes["OneStepTextToImagePipeline"]
    ref = images(text, prompt="ab", generator=gens(0)[0])
    text.enable_attention_slicing(1)
    try:
        unet = text.student.backbone.unet  # OneStepGenerator → UNetDenoiser → UNet2DConditionModel
        assert any(isinstance(p, SlicedAttnProcessor) for p in unet.attn_processors.values())
        torch.testing.assert_close(images(text, prompt="ab", generator=gens(0)[0]), ref, atol=1e-5, rtol=0)
    finally:
        text.disable_attention_slicing()
    assert not any(isinstance(p, SlicedAttnProcessor) for p in unet.attn_processors.values())
    points = GenDivPipeline(MLPDenoiser(dim=2, hidden=8, depth=1), EDMEulerScheduler())  # no attention anywhere
    with pytest.raises(ValueError, match="attention slicing does not apply to this GenDivPipeline"):
        points.enable_attention_slicing()
    with pytest.raises(ValueError, match="xformers attention does not apply to this GenDivPipeline"):
        points.enable_xformers_memory_efficient_attention()
    with pytest.raises(ValueError, match=r"denoiser: UNetDenoiser\) is a diffusers model with sliceable attention"):
        pipes["GenDivPipeline"].enable_attention_slicing()  # UNet2DModel's attention does not slice in diffusers


@pytest.mark.parametrize("cls", BOX_SCHEDULERS)
def test_box_schedulers_are_compatible_with_each_other(cls):
    sched = cls(sigma_min=0.02, box_high=2.0)
    assert set(sched.compatibles) == set(BOX_SCHEDULERS)
    for other in sched.compatibles:
        moved = other.from_config(sched.config)
        assert (moved.config.sigma_min, moved.config.box_high) == (0.02, 2.0)


@pytest.mark.parametrize("cls", BOX_SCHEDULERS)
def test_custom_sigma_grid_through_retrieve_timesteps(cls):
    sched = cls()
    grid = [4.0, 1.0, 0.25, 0.05]
    for key in ("sigmas", "timesteps"):
        steps, n = retrieve_timesteps(sched, device="cpu", **{key: grid})
        assert n == 4
        torch.testing.assert_close(steps, torch.tensor(grid))  # the grid as given, to round-off
        torch.testing.assert_close(sched.sigmas, steps)
    for bad in ([1.0, 2.0], [1.0, 0.0], [1.0, float("nan")], []):
        with pytest.raises(ValueError, match="custom σ grid must be"):
            sched.set_timesteps(sigmas=bad)
    with pytest.raises(ValueError, match="sigmas or timesteps, not both"):
        sched.set_timesteps(sigmas=grid, timesteps=grid)


@pytest.mark.parametrize("name", ["GenDivPipeline", "ReflectedDiffusionPipeline"])
def test_pipelines_take_custom_grids_like_diffusers_pipelines(pipes, name):
    """The scheduler's own default grid passed explicitly gives the samples that num_inference_steps gives; a
    different grid gives others. EDMEulerScheduler reads ``sigmas`` as its ramp in [0, 1] (diffusers' meaning)."""
    pipe = pipes[name]
    if name == "GenDivPipeline":
        pipe = GenDivPipeline(pipe.denoiser, EDMEulerScheduler())
        pipe.set_progress_bar_config(disable=True)
        default = torch.linspace(0, 1, 5)
    else:
        pipe.scheduler.set_timesteps(5)
        default = pipe.scheduler.sigmas.clone()
    kwargs = {"batch_size": 2, "class_labels": [0, 1]}
    ref = images(pipe, num_inference_steps=5, generator=gens(0, 1), **kwargs)
    torch.testing.assert_close(images(pipe, sigmas=default.tolist(), generator=gens(0, 1), **kwargs), ref)
    assert pipe.num_timesteps == 5
    other = images(pipe, sigmas=(default[1:] if name == "GenDivPipeline" else default[:-1]), generator=gens(0, 1),
                   **kwargs)
    assert pipe.num_timesteps == 4 and not torch.allclose(other, ref)
    if name == "ReflectedDiffusionPipeline":
        torch.testing.assert_close(images(pipe, timesteps=default, generator=gens(0, 1), **kwargs), ref)
    else:
        with pytest.raises(ValueError, match="does not support custom timestep schedules"):
            images(pipe, timesteps=[1.0, 0.5], **kwargs)


FRESH_PROCESS = """
import sys, torch
from diffusers import DiffusionPipeline
refs = torch.load(sys.argv[1])
for name, ref in refs.items():
    folder, kwargs = ref.pop("folder"), ref.pop("kwargs")
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)  # stock diffusers first
    assert type(pipe).__name__ == name and type(pipe).__module__.startswith("gendiv."), type(pipe)
    import gendiv
    for loaded in (pipe, gendiv.load_pipeline(folder), getattr(gendiv, name).from_pretrained(folder)):
        loaded.set_progress_bar_config(disable=True)
        gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
        out = loaded(output_type="pt", generator=gens, **kwargs).images
        torch.testing.assert_close(out, ref["images"], atol=1e-6, rtol=0)
print("ok")
"""


def test_saved_folders_load_through_stock_diffusers_in_a_fresh_process(pipes, tmp_path):
    """``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` (the folder's one-line
    gendiv_pipeline.py imports the class from gendiv), ``gendiv.load_pipeline`` and the class's own from_pretrained
    all rebuild the same sampler; gendiv's loaders never execute that file."""
    refs = {}
    for name in NAMES:
        folder = tmp_path / name
        pipes[name].save_pretrained(folder)
        assert json.loads((folder / "model_index.json").read_text())["_class_name"] == ["gendiv_pipeline", name]
        kwargs = batch_call(name, 2)
        refs[name] = {"images": images(pipes[name], generator=gens(0, 1), **kwargs), "kwargs": kwargs,
                      "folder": str(folder)}
    torch.save(refs, tmp_path / "refs.pt")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "refs.pt")], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    folder = tmp_path / "GenDivPipeline"
    (folder / "gendiv_pipeline.py").write_text("raise RuntimeError('executed')\n")
    assert isinstance(load_pipeline(folder), GenDivPipeline) and isinstance(GenDivPipeline.from_pretrained(folder),
                                                                            GenDivPipeline)


def test_folders_saved_with_a_plain_class_name_still_load(pipes, tmp_path):
    pipes["GenDivPipeline"].save_pretrained(tmp_path / "old")
    index = json.loads((tmp_path / "old" / "model_index.json").read_text())
    (tmp_path / "old" / "model_index.json").write_text(json.dumps({**index, "_class_name": "GenDivPipeline"}))
    (tmp_path / "old" / "gendiv_pipeline.py").unlink()
    assert isinstance(load_pipeline(tmp_path / "old"), GenDivPipeline)


@pytest.mark.parametrize("name", ["GenDivPipeline", "ReflectedDiffusionPipeline"])
def test_guiders_round_trip_and_sample_the_same(pipes, name, tmp_path):
    """A gendiv guider through guider_config.json and a diffusers-form guider through ``from_config(g.config)`` keep
    every setting, so the pipeline samples the same with the reloaded guider."""
    from gendiv.guidance import ClassifierFreeGuidedDenoiser, SigmaIntervalGuidedDenoiser, SigmaIntervalGuider

    pipe = pipes[name]
    kwargs = {**batch_call(name, 2), "class_labels": [0, 2]}
    ours = SigmaIntervalGuidedDenoiser(ClassifierFreeGuidedDenoiser(pipe.denoiser, 2.5), 0.1, 3.0)
    ours.save_pretrained(tmp_path / "ours")
    timestep_format = "sigma" if name == "ReflectedDiffusionPipeline" else "edm"  # the box schedulers' t is σ
    theirs = SigmaIntervalGuider(guidance_scale=3.5, sigma_lo=0.2, sigma_hi=2.0, guidance_rescale=0.3,
                                 timestep_format=timestep_format)
    reloaded_theirs = SigmaIntervalGuider.from_config(theirs.config)
    assert dict(reloaded_theirs.config) == dict(theirs.config)
    for guider, reloaded in ((ours, type(ours).from_pretrained(tmp_path / "ours", pipe.denoiser)),
                             (theirs, reloaded_theirs)):
        torch.testing.assert_close(images(pipe, guider=reloaded, generator=gens(0, 1), **kwargs),
                                   images(pipe, guider=guider, generator=gens(0, 1), **kwargs))


def test_functional_sampler_takes_a_generator_list():
    from gendiv.sampling import sample

    den = MLPDenoiser(dim=2, hidden=8, depth=1)
    batch = sample(den, (3, 2), num_steps=3, generator=gens(5, 6, 7))
    torch.testing.assert_close(batch[1:2], sample(den, (1, 2), num_steps=3, generator=gens(6)[0]), atol=1e-6, rtol=0)
