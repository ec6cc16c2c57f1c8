"""Stock diffusers models and pipeline folders as teachers (issue 12, part 1 and 5): the wrapped denoiser's x̂₀ equals
each scheduler family's own pred_original_sample (prediction type read from the scheduler config, v-prediction
included); a DDPMPipeline folder samples and distils from the command line, data-free for DMD; bad folders and
schedulers give clear errors."""
import json

import pytest
import torch
from diffusers import (DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, EDMEulerScheduler,
                       EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel)

from gendiv import UNetDenoiser
from gendiv.cli import main
from gendiv.models import denoiser_from_pipeline_folder, denoiser_from_unet_and_scheduler


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, **kw)
    for p in unet.parameters():  # random, not the zero-ish init, so the output matters
        p.data += 0.02 * torch.randn_like(p)
    return unet


CASES = [(DDPMScheduler, "epsilon"), (DDPMScheduler, "v_prediction"), (DDPMScheduler, "sample"),
         (DDIMScheduler, "epsilon"), (DDIMScheduler, "v_prediction"), (EulerDiscreteScheduler, "epsilon"),
         (EulerDiscreteScheduler, "v_prediction"), (DPMSolverMultistepScheduler, "epsilon"),
         (DPMSolverMultistepScheduler, "v_prediction"), (EDMEulerScheduler, "epsilon"),
         (EDMEulerScheduler, "v_prediction"), (FlowMatchEulerDiscreteScheduler, None)]


@pytest.mark.parametrize("cls, pred", CASES, ids=[f"{c.__name__}-{p}" for c, p in CASES])
def test_x0_round_trip_per_scheduler_family(cls, pred):
    unet = tiny_unet()
    kw = {} if pred is None else {"prediction_type": pred}
    if cls in (DDPMScheduler, DDIMScheduler):
        kw["clip_sample"] = False
    sched = cls(**kw)
    sched.set_timesteps(10)
    den = denoiser_from_unet_and_scheduler(unet, sched)
    assert den.config.prediction_type == (pred or "flow")
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    i = 3
    t = sched.timesteps[i]
    with torch.no_grad():
        if cls is DPMSolverMultistepScheduler:
            sched._init_step_index(t)
            alpha, sigma = sched._sigma_to_alpha_sigma_t(sched.sigmas[sched.step_index])
            x_t = alpha * x0 + sigma * eps
            ref = sched.convert_model_output(unet(x_t, t).sample, sample=x_t)
            ours = den(x_t / alpha, (sigma / alpha).expand(2))
        elif cls in (DDPMScheduler, DDIMScheduler):
            ac = sched.alphas_cumprod[int(t)]
            alpha, sigma = ac.sqrt(), (1 - ac).sqrt()
            x_t = alpha * x0 + sigma * eps
            ref = sched.step(unet(x_t, t).sample, t, x_t).pred_original_sample
            ours = den(x_t / alpha, (sigma / alpha).expand(2))
        elif cls is FlowMatchEulerDiscreteScheduler:
            s = sched.sigmas[i]
            x_t = (1 - s) * x0 + s * eps
            ref = x_t - s * unet(x_t, t).sample  # the scheduler's velocity v = ε − x₀
            ours = den(x_t / (1 - s), (s / (1 - s)).expand(2))
        else:  # Euler and EDM: σ-space samples
            s = sched.sigmas[i]
            x_t = x0 + s * eps
            ref = sched.step(unet(sched.scale_model_input(x_t, t), t).sample, t, x_t).pred_original_sample
            ours = den(x_t, s.expand(2))
    torch.testing.assert_close(ours, ref, atol=5e-5, rtol=1e-4)


def test_from_unet_reads_the_scheduler_and_says_nothing_silently():
    unet = tiny_unet()
    den = UNetDenoiser.from_unet(unet, scheduler=DDPMScheduler(prediction_type="v_prediction"))
    assert (den.config.parameterization, den.config.prediction_type) == ("vp", "v_prediction")
    with pytest.raises(ValueError, match="unsupported scheduler ScoreSdeVeScheduler"):
        from diffusers import ScoreSdeVeScheduler
        UNetDenoiser.from_unet(unet, scheduler=ScoreSdeVeScheduler())


def test_ddpm_pipeline_folder_samples_and_distils_data_free(tmp_path):
    folder = tmp_path / "ddpm"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(prediction_type="v_prediction")).save_pretrained(folder)
    main(["sample", "--pipeline", str(folder), "--num-samples", "4", "--steps", "3", "--out", str(tmp_path / "s")])
    assert (tmp_path / "s.npz").is_file()
    # DMD needs no real data: the teacher's folder is all it takes
    main(["distill", f"teacher.source=pipeline:{folder}", "method.name=dmd", f"run.output_dir={tmp_path / 'run'}",
          "run.steps=2", "run.progress=false", "run.batch_size=4", "method.fake_warmup_steps=0"])
    from gendiv import OneStepPipeline

    student = OneStepPipeline.from_pretrained(str(tmp_path / "run" / "pipeline"))
    student.set_progress_bar_config(disable=True)
    images = student(batch_size=2, output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    # a plain folder path works as well
    den = denoiser_from_pipeline_folder(folder)
    assert den.config.prediction_type == "v_prediction"


def test_bad_teacher_folders_name_the_folder_and_component(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is neither a diffusers nor a gendiv pipeline folder"):
        denoiser_from_pipeline_folder(tmp_path / "empty")
    (tmp_path / "latent").mkdir()
    (tmp_path / "latent" / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "PNDMScheduler"]}))
    with pytest.raises(ValueError, match=r"latent.*StableDiffusionPipeline is a latent/text-conditioned pipeline"):
        denoiser_from_pipeline_folder(tmp_path / "latent")
    (tmp_path / "nounet").mkdir()
    (tmp_path / "nounet" / "model_index.json").write_text(json.dumps({"_class_name": "X", "scheduler": ["diffusers", "DDPMScheduler"]}))
    with pytest.raises(ValueError, match=r"nounet: X has no unet component"):
        denoiser_from_pipeline_folder(tmp_path / "nounet")
    folder = tmp_path / "flowv"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler()).save_pretrained(folder)
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "prediction_type": "flow"}))
    with pytest.raises(SystemExit) as e:
        main(["distill", f"teacher.source={folder}", "method.name=dmd", f"run.output_dir={tmp_path / 'r'}", "run.steps=1",
              "method.fake_warmup_steps=0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "flowv" in err and "prediction_type='flow' is not supported" in err
    with pytest.raises(SystemExit) as e:
        main(["distill", f"teacher.source=pipeline:{tmp_path / 'flowv'}", "method.name=dmd2",
              f"run.output_dir={tmp_path / 'r2'}", "run.steps=1"])
    assert e.value.code == 2


def test_loading_saved_pipelines(tmp_path):
    """gendiv's pipelines load with gendiv.load_pipeline (or their own class), and with DiffusionPipeline.from_pretrained
    through diffusers' route for pipeline code kept in the folder, which asks for trust_remote_code (README)."""
    import gendiv
    from diffusers import DiffusionPipeline

    gendiv.GenDivPipeline.from_denoiser(gendiv.MLPDenoiser(dim=2)).save_pretrained(tmp_path / "g")
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler()).save_pretrained(tmp_path / "d")
    assert type(gendiv.load_pipeline(tmp_path / "g")).__name__ == "GenDivPipeline"
    assert type(gendiv.load_pipeline(tmp_path / "d")).__name__ == "DDPMPipeline"
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(str(tmp_path / "g"))  # with it: tests/test_diffusers_conformance.py
