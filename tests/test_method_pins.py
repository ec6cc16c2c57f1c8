"""The trainer knows no method by name: a few steps of each method reproduce the losses recorded before a refactor
(same seeds, same draws). PINNED: recorded before the method/trainer split (commit e753545); PINNED_V2: recorded
with the round-2 trainer (commit 8fd4d0b) before the distillation contract v2, so moving every method onto the
contract (gendiv/distill/) changed no loss. SMT's row was recorded after one deliberate change: its adaptive step
no longer adds 1e-6 under the square root (it is now DMD's step at α = 1 at every scale; the old rows differ in
the 3rd digit of distill_loss and agree to 1e-9 with the old constant)."""
import json
from pathlib import Path

import numpy as np
import pytest

from gendiv.training import DistillConfig, distill, load_config

FAST = ["run.progress=false", "run.log_every=1", "run.batch_size=64", "method.fake_warmup_steps=2", "eval.num_samples=200",
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
    extra = ["method.regression.weight=0.5", "method.regression.pairs=32"] if method == "dmd" else []
    extra += ["method.gan.weight_disc=1.0"] if method in ("dmd2", "f_distill") else []
    distill(load_config(DistillConfig, None, [f"run.output_dir={tmp_path}", *FAST, f"method.name={method}", *extra]))
    rows = [json.loads(line) for line in Path(tmp_path, "metrics.jsonl").read_text().splitlines()]
    got = [[r.get(k) for k in KEYS] for r in rows if "fake_loss" in r]
    want = PINNED[method]
    assert [[v is None for v in row] for row in got] == [[v is None for v in row] for row in want]
    np.testing.assert_allclose(np.array(got, dtype=float), np.array(want, dtype=float), rtol=1e-5, atol=1e-7)


EXTRA_V2 = {"sid": [], "sida": ["method.gan.weight_gen=0.01"],
            "uni_instruct": ["method.divergence=forward_kl", "method.gan.weight_gen=0.003"],
            "smt": ["teacher.source=none", "data.source=toy:ring8_imbalanced"], "smd": [],
            "dmd2_reuse": ["method.reuse_generator_samples=true", "method.gan.weight_disc=1.0"]}
PINNED_V2 = {'dmd2_reuse': [{'disc_loss': 1.39489412, 'fake_loss': 0.51491499},
                {'disc_loss': 1.39233065, 'fake_loss': 0.57295001},
                {'disc_loss': 1.38946247,
                 'distill_loss': 0.38510528,
                 'fake_loss': 0.71206832,
                 'gan_gen_loss': 0.77289689},
                {'disc_loss': 1.38780272, 'fake_loss': 0.74981618},
                {'disc_loss': 1.38593745,
                 'distill_loss': 0.33121249,
                 'fake_loss': 0.881271,
                 'gan_gen_loss': 0.75495219},
                {'disc_loss': 1.3830936, 'fake_loss': 0.53535807},
                {'disc_loss': 1.38377488,
                 'distill_loss': 0.37450731,
                 'fake_loss': 0.77041888,
                 'gan_gen_loss': 0.73579055},
                {'disc_loss': 1.3857522, 'fake_loss': 0.51549029}],
 'sid': [{'fake_loss': 0.52270597}, {'fake_loss': 0.76631373},
         {'distill_loss': -0.10587467, 'fake_loss': 0.78808856}, {'fake_loss': 0.68525535},
         {'distill_loss': -0.01457899, 'fake_loss': 0.79170209}, {'fake_loss': 0.55307996},
         {'distill_loss': -0.06083243, 'fake_loss': 0.51051354}, {'fake_loss': 0.60356653}],
 'sida': [{'disc_loss': 1.39366233, 'fake_loss': 0.52270597},
          {'disc_loss': 1.38506639, 'fake_loss': 0.59500372},
          {'disc_loss': 1.39219689,
           'distill_loss': -0.02507272,
           'fake_loss': 0.64459372,
           'gan_gen_loss': 0.72693837},
          {'disc_loss': 1.39043188, 'fake_loss': 0.52368635},
          {'disc_loss': 1.38484108,
           'distill_loss': -0.01754498,
           'fake_loss': 0.65624297,
           'gan_gen_loss': 0.72084117},
          {'disc_loss': 1.38208365, 'fake_loss': 0.45392212},
          {'disc_loss': 1.39092791,
           'distill_loss': -0.04267188,
           'fake_loss': 0.48487267,
           'gan_gen_loss': 0.72484195},
          {'disc_loss': 1.38557339, 'fake_loss': 0.55117136}],
 'smd': [{'disc_loss': 0.47082472, 'fake_loss': 0.7161935},
         {'disc_loss': 0.75231397, 'fake_loss': 0.46768051},
         {'disc_loss': 0.54112822,
          'distill_loss': 0.31641614,
          'fake_loss': 0.63450199,
          'gan_gen_loss': 0.39238721},
         {'disc_loss': 0.55050343, 'fake_loss': 0.60965246},
         {'disc_loss': 0.51264542,
          'distill_loss': 0.32338652,
          'fake_loss': 0.51526588,
          'gan_gen_loss': 0.42820182},
         {'disc_loss': 0.32924488, 'fake_loss': 0.48591471},
         {'disc_loss': 0.3613376,
          'distill_loss': 0.28138709,
          'fake_loss': 0.73952651,
          'gan_gen_loss': 0.41432405},
         {'disc_loss': 0.25509685, 'fake_loss': 0.81285405}],
 'smt': [{'fake_loss': 1.09161246}, {'fake_loss': 0.89586663},
         {'distill_loss': 0.03919272, 'fake_loss': 0.89076912}, {'fake_loss': 0.85640723},
         {'distill_loss': 0.02153123, 'fake_loss': 0.92875123}, {'fake_loss': 0.9973222},
         {'distill_loss': 0.2091435, 'fake_loss': 0.97868836}, {'fake_loss': 1.05691743}],
 'uni_instruct': [{'disc_loss': 1.39366233, 'fake_loss': 0.52270597},
                  {'disc_loss': 1.38506639, 'fake_loss': 0.59500372},
                  {'disc_loss': 1.39219689,
                   'distill_loss': -0.04610846,
                   'fake_loss': 0.64459372,
                   'gan_gen_loss': 0.72693837},
                  {'disc_loss': 1.39056516, 'fake_loss': 0.52220649},
                  {'disc_loss': 1.38494837,
                   'distill_loss': 0.00193319,
                   'fake_loss': 0.65553856,
                   'gan_gen_loss': 0.72083557},
                  {'disc_loss': 1.38221049, 'fake_loss': 0.45264235},
                  {'disc_loss': 1.39107656,
                   'distill_loss': 0.04840843,
                   'fake_loss': 0.48363346,
                   'gan_gen_loss': 0.72498381},
                  {'disc_loss': 1.38568306, 'fake_loss': 0.55277926}]}


@pytest.mark.parametrize("case", sorted(PINNED_V2))
def test_losses_match_the_round_2_trainer(case, tmp_path):
    method = case.removesuffix("_reuse")
    distill(load_config(DistillConfig, None, [f"run.output_dir={tmp_path}", *FAST, f"method.name={method}",
                                              *EXTRA_V2[case]]))
    rows = [json.loads(line) for line in Path(tmp_path, "metrics.jsonl").read_text().splitlines()]
    got = [{k: v for k, v in r.items() if k.endswith("_loss")} for r in rows
           if not any(k.startswith("final/") for k in r)]
    want = PINNED_V2[case]
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose([g[k] for k in sorted(w)], [w[k] for k in sorted(w)], rtol=1e-5, atol=1e-7)
