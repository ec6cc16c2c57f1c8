"""A DiT pipeline folder distils from the command line (data-free DMD, class labels with DiT's null class) and the
exported one-step student loads and samples in a fresh process (issue 22)."""
import subprocess
import sys

import pytest
import torch

from gendiv import testing
from gendiv.cli import main
from gendiv.models.teachers import load_teacher


def test_dit_folder_distils_and_the_student_loads_in_a_fresh_process(tmp_path):
    folder = tmp_path / "dit"
    testing.tiny_dit_pipeline().save_pretrained(folder)
    main(["distill", f"teacher.source={folder}", "method.name=dmd", "method.fake_warmup_steps=0",
          f"run.output_dir={tmp_path / 'run'}", "run.steps=2", "run.progress=false", "run.batch_size=2"])
    code = ("import sys, torch, gendiv\n"
            "pipe = gendiv.load_pipeline(sys.argv[1])\n"
            "assert pipe.student.num_classes == 1000 and type(pipe.student.backbone).__name__ == 'PipelineDenoiser'\n"
            "x = pipe(batch_size=2, output_type='pt', generator=torch.Generator().manual_seed(0)).images\n"
            "assert x.shape == (2, 4, 8, 8) and torch.isfinite(x).all(), x.shape\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run" / "pipeline")], capture_output=True,
                         text=True, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    from diffusers import DiTTransformer2DModel

    import gendiv

    student = gendiv.load_pipeline(str(tmp_path / "run" / "pipeline")).student.backbone.net.state_dict()
    teacher = DiTTransformer2DModel.from_pretrained(folder / "transformer").state_dict()
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)  # DMD moved the student off the teacher


TEXT_FAMILIES = {"sdxl": ("StableDiffusionXLPipeline", testing.tiny_sdxl_pipeline),
                 "sd3": ("StableDiffusion3Pipeline", testing.tiny_sd3_pipeline),
                 "pixart": ("PixArtAlphaPipeline", testing.tiny_pixart_pipeline)}
FRESH_PROCESS_CHECK = """
import sys, torch, diffusers
pipe = getattr(diffusers, sys.argv[1]).from_pretrained(sys.argv[2])
pipe.set_progress_bar_config(disable=True)
want = torch.load(sys.argv[3])
kw = {"use_resolution_binning": False} if "PixArt" in sys.argv[1] else {}
got = pipe(prompt=want["prompts"], num_inference_steps=1, guidance_scale=1.0, latents=want["z"], output_type="latent",
           **kw).images
torch.testing.assert_close(got, want["x"], atol=1e-4, rtol=1e-4)
"""


@pytest.mark.parametrize("family", sorted(TEXT_FAMILIES))
def test_text_family_distils_and_the_student_is_a_stock_one_step_pipeline(family, tmp_path):
    """A few data-free DMD steps on the family's tiny folder; the EMA student saved as the teacher's own pipeline class
    reproduces, in a fresh process and through stock diffusers, the student's one-step latents."""
    from gendiv.models.pipeline_teachers import one_step_scheduler
    from gendiv.training import load_config
    from gendiv.training.distill import DistillConfig, DistillTrainer

    class_name, build = TEXT_FAMILIES[family]
    folder = tmp_path / family
    build().save_pretrained(folder)
    den, _, teacher = load_teacher(str(folder))
    sigma_init = 1e6 if den.config.parameterization == "flow" else None
    if sigma_init is None:  # the σ at which the stock one-step pipeline starts
        from diffusers import EulerDiscreteScheduler

        euler = EulerDiscreteScheduler.from_config(teacher.pipeline.scheduler.config, timestep_spacing="trailing")
        euler.set_timesteps(1)
        sigma_init = float(euler.sigmas[0])
    one_step_scheduler(teacher.pipeline.scheduler, den.config, sigma_init)  # accepted
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\ndog 2\n")
    cfg = load_config(DistillConfig, None, [
        f"teacher.source={folder}", f"teacher.prompts={prompts}", "method.name=dmd", "method.fake_warmup_steps=0",
        f"run.output_dir={tmp_path / 'run'}", "run.steps=2", "run.progress=false", "run.batch_size=2",
        f"student.sigma_init={sigma_init}", "run.mixed_precision=no"])  # fp32, as the stock pipeline runs
    trainer = DistillTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.ema_generator.state_dict().items()}
    for _ in range(2):
        trainer.train_step()
    student = trainer.ema_generator
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    teacher.save_student(student, tmp_path / "student")
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        x = student(z, teacher.condition(["a red cat", "dog 2"]))
    torch.save({"z": z, "x": x, "prompts": ["a red cat", "dog 2"]}, tmp_path / "want.pt")
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS_CHECK, class_name, str(tmp_path / "student"),
                          str(tmp_path / "want.pt")], capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
