"""The trainer knows no method by name: a few steps of each pre-refactor method reproduce the losses recorded
before the method/trainer split (same seeds, same draws), so DMD/DMD2/DI/f-distill keep their exact numbers."""
import json
from pathlib import Path

import numpy as np
import pytest

from gendiv.training import DistillConfig, distill, load_config

FAST = ["run.progress=false", "run.log_every=1", "run.batch_size=64", "optim.fake_warmup_steps=2", "eval.num_samples=200",
        "eval.teacher_steps=3", "student.model.hidden=32", "student.model.depth=1", "student.discriminator_hidden=32",
        "run.steps=8", "method.fake_updates_per_generator_update=2"]
KEYS = ("fake_loss", "disc_loss", "distill_loss", "gan_gen_loss", "regression_loss")
# recorded with the trainer before the refactor (commit e753545), gan_weight_disc 1.0 as it was then
PINNED = {
    'diff_instruct': [[0.51491499, None, None, None, None], [0.74502224, None, None, None, None], [0.79134834, None, 0.06036453, None, None], [0.67592436, None, None, None, None], [0.79564202, None, 0.06297727, None, None], [0.51937532, None, None, None, None], [0.49975711, None, 0.06502996, None, None], [0.58630884, None, None, None, None]],
    'dmd': [[0.51491499, None, None, None, None], [0.74502224, None, None, None, None], [0.79134834, None, 0.36631045, None, 11.38913345], [0.55347764, None, None, None, None], [0.67370594, None, 0.36989686, None, 9.43224621], [0.55500859, None, None, None, None], [0.71389157, None, 0.34866309, None, 11.20462704], [0.64078993, None, None, None, None]],
    'dmd2': [[0.51491499, 1.39489412, None, None, None], [0.57295001, 1.39233065, None, None, None], [0.61905223, 1.39449549, 0.34505263, 0.76720077, None], [0.49854296, 1.38911939, None, None, None], [0.65021342, 1.38895476, 0.37662041, 0.74165553, None], [0.45291534, 1.38357997, None, None, None], [0.47393525, 1.38613009, 0.37611413, 0.73133433, None], [0.52393049, 1.37833774, None, None, None]],
    'f_distill': [[0.51491499, 1.39489412, None, None, None], [0.57295001, 1.39233065, None, None, None], [0.61905223, 1.39449549, 0.34510916, 0.76720077, None], [0.49854273, 1.38911939, None, None, None], [0.650213, 1.38895476, 0.37671056, 0.74165541, None], [0.4529129, 1.38358009, None, None, None], [0.47393027, 1.38613021, 0.37611714, 0.73133403, None], [0.52385783, 1.37834263, None, None, None]],
}


@pytest.mark.parametrize("method", sorted(PINNED))
def test_losses_match_the_pre_refactor_trainer(method, tmp_path):
    extra = ["method.regression_weight=0.5", "method.regression_pairs=32"] if method == "dmd" else []
    extra += ["method.gan_weight_disc=1.0"] if method in ("dmd2", "f_distill") else []
    distill(load_config(DistillConfig, None, [f"run.output_dir={tmp_path}", *FAST, f"method.name={method}", *extra]))
    rows = [json.loads(line) for line in Path(tmp_path, "metrics.jsonl").read_text().splitlines()]
    got = [[r.get(k) for k in KEYS] for r in rows if "fake_loss" in r]
    want = PINNED[method]
    assert [[v is None for v in row] for row in got] == [[v is None for v in row] for row in want]
    np.testing.assert_allclose(np.array(got, dtype=float), np.array(want, dtype=float), rtol=1e-5, atol=1e-7)
