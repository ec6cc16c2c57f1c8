"""A DiT pipeline folder distils from the command line (data-free DMD, class labels with DiT's null class) and the
exported one-step student loads and samples in a fresh process (issue 22)."""
import subprocess
import sys

import torch

from gendiv import testing
from gendiv.cli import main


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
