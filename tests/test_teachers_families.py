"""Teachers of the DiT, SDXL, SD3 and PixArt families (issue 22): saved tiny random pipeline folders, loaded by
gendiv, give at every step of the folder's own pipeline run the x̂₀ its scheduler computes (ε, v and flow), CFG equal
to the pipeline's guided prediction, and the pipeline's own empty-prompt null condition."""
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from gendiv import testing
from gendiv.guidance import ClassifierFreeGuidance
from gendiv.models.teachers import load_teacher

BUILDERS = {"dit": testing.tiny_dit_pipeline, "sdxl": testing.tiny_sdxl_pipeline, "sd3": testing.tiny_sd3_pipeline,
            "pixart": testing.tiny_pixart_pipeline}


def record_steps(pipe):
    """Wrap ``pipe.scheduler.step`` to record (σ-index, timestep, sample, model output, the scheduler's x̂₀)."""
    records, step = [], pipe.scheduler.step

    def recording(model_output, timestep, sample, *args, **kwargs):
        if getattr(pipe.scheduler, "step_index", 0) is None:
            pipe.scheduler._init_step_index(timestep)
        index = getattr(pipe.scheduler, "step_index", None)  # Euler and flow: read before step() advances it
        out = step(model_output, timestep, sample, *args, **kwargs)
        x0 = out[1] if isinstance(out, tuple) and len(out) > 1 else getattr(out, "pred_original_sample", None)
        records.append((index, timestep, sample.clone(), model_output.clone(), None if x0 is None else x0.clone()))
        return out

    pipe.scheduler.step = recording
    return records


def edm_point(scheduler, index, timestep, sample, model_output, x0):
    """(x in EDM coordinates, σ, the scheduler's own x̂₀) for one recorded step."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        s = scheduler.sigmas[index]
        return sample / (1 - s), s / (1 - s), sample - s * model_output  # x_t = (1−s)x₀ + sε, v = ε − x₀
    if isinstance(scheduler, EulerDiscreteScheduler):
        return sample, scheduler.sigmas[index], x0
    ac = scheduler.alphas_cumprod[int(timestep)]
    return sample / ac.sqrt(), ((1 - ac) / ac).sqrt(), x0


def run_pipeline(family, pipe, guidance_scale):
    g = torch.Generator().manual_seed(3)
    if family == "dit":
        return pipe(class_labels=[3, 7], guidance_scale=guidance_scale, num_inference_steps=2, generator=g,
                    output_type="np")
    kw = {"use_resolution_binning": False} if family == "pixart" else {}
    return pipe(prompt=["a red cat", "dog 2"], guidance_scale=guidance_scale, num_inference_steps=2, generator=g,
                output_type="latent", **kw)


def condition(family, teacher_text, batch):
    from gendiv.condition import Condition

    if family == "dit":
        return Condition(class_labels=torch.tensor([3, 7]))
    return teacher_text.condition(["a red cat", "dog 2"])


SCHEDULERS = {  # a stock scheduler per family; trailing DDIM so both steps are well inside (0, T)
    "dit": lambda: DDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
    "pixart": lambda: DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prediction_type="v_prediction"),
    "sdxl": None, "sd3": None}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family_folder(request, tmp_path_factory):
    family = request.param
    pipe = BUILDERS[family]()
    if SCHEDULERS[family] is not None:
        pipe.scheduler = SCHEDULERS[family]()
    folder = tmp_path_factory.mktemp(family)
    pipe.save_pretrained(folder)
    return family, folder


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_x0_and_cfg_equal_the_folder_pipeline_at_every_step(family_folder, guidance_scale):
    family, folder = family_folder
    den, _, text = load_teacher(str(folder))
    den = den.eval()
    if family == "dit":
        from diffusers import DiTPipeline

        pipe = DiTPipeline.from_pretrained(folder)
    else:
        pipe = type(text.pipeline).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    records = record_steps(pipe)
    run_pipeline(family, pipe, guidance_scale)
    guided = ClassifierFreeGuidance(den, guidance_scale)
    checked = 0
    for index, timestep, sample, model_output, x0 in records:
        sample, model_output = sample[:2], model_output[:2]  # DiT steps both CFG halves; they are equal
        x0 = None if x0 is None else x0[:2]
        if isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.sigmas[index] == 1:
            continue  # σ_EDM = ∞ at pure noise
        x, sigma, ref = edm_point(pipe.scheduler, index, timestep, sample, model_output, x0)
        with torch.no_grad():
            ours = guided(x.float(), torch.as_tensor(sigma).float().expand(2), condition(family, text, 2))
        torch.testing.assert_close(ours, ref.float(), atol=2e-4, rtol=2e-4)
        checked += 1
    assert checked >= 1


def test_null_condition_is_the_pipelines_empty_prompt(family_folder):
    family, folder = family_folder
    den, _, text = load_teacher(str(folder))
    if family == "dit":
        assert den.config.num_classes == 1000  # DiTPipeline's class_null = 1000
        return
    null = den.null_text_embeds
    if family == "sdxl":  # force_zeros_for_empty_prompt=True: SDXL's negative pass is all zeros
        assert torch.count_nonzero(null) == 0
    else:  # "" encoded: the pipeline's own negative
        assert torch.count_nonzero(null) > 0
        torch.testing.assert_close(null, text.encode([""])[0]) if family == "sd3" else None
