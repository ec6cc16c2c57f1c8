"""Every bad input a new user tried (issue 7), table-driven: each gives one clear line on stderr and exit code 2
from the CLI (or a ValueError naming the argument in Python), or the documented behaviour. And a rerun into an
existing run folder loses nothing."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gendiv.cli import main

TRAIN = ["train", "run.progress=false", "run.steps=2", "eval.num_samples=16", "eval.num_steps=2"]
DISTILL = ["distill", "run.progress=false", "run.steps=2", "eval.num_samples=16", "eval.teacher_steps=2",
           "student.model.hidden=16", "student.model.depth=1", "run.batch_size=16", "method.fake_warmup_steps=0"]


def _files(tmp: Path):
    """Bad files the cases point at, made once per test."""
    (tmp / "bad.yaml").write_text("run:\n  steps: 10\n   batch_size: [1\n")
    nan = np.zeros((8, 1, 8, 8), np.float32)
    nan[3, 0, 2, 2] = np.nan
    np.savez(tmp / "nan.npz", images=nan)
    np.savez(tmp / "labels.npz", images=np.zeros((8, 8, 8), np.uint8), labels=np.arange(5))
    np.savez(tmp / "float_labels.npz", images=np.zeros((8, 8, 8), np.uint8), labels=np.linspace(0, 1, 8))
    np.savez(tmp / "u255.npz", images=np.full((8, 8, 8), 200.0, np.float32))
    np.savez(tmp / "nosigma.npz", mu=np.zeros(2048))
    np.savez(tmp / "imgs.npz", images=np.zeros((4, 8, 8), np.uint8))
    (tmp / "garbage.pt").write_bytes(b"this is not a weights file" * 100)
    from gendiv import MLPDenoiser, OneStepGenerator, OneStepPipeline

    OneStepPipeline(student=OneStepGenerator.from_denoiser(MLPDenoiser(dim=2, hidden=8, depth=1))).save_pretrained(
        str(tmp / "onestep"))
    _issue21_files(tmp)


def _issue21_files(tmp: Path):
    """Inputs of issue 21: arrays outside their declared range, damaged archives, folders gendiv cannot sample."""
    np.savez(tmp / "int64.npz", images=np.full((4, 8, 8), 300, np.int64))
    np.savez(tmp / "nan_fid.npz", images=np.where(np.eye(8, dtype=bool), np.nan, 0.5)[None].repeat(4, 0))
    np.save(tmp / "array.npy", np.zeros((4, 8, 8), np.uint8))
    (tmp / "corrupt.npz").write_bytes(np.load.__doc__.encode()[:500])
    np.savez(tmp / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    np.savez(tmp / "points.npz", samples=np.zeros((4, 2), np.float32), value_range=np.array([np.nan, np.nan]))
    for name, index in (("ldm", {"_class_name": "LDMPipeline", "vqvae": ["diffusers", "VQModel"],
                                 "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}),
                        ("dit", {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
                                 "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"]})):
        (tmp / name).mkdir()
        (tmp / name / "model_index.json").write_text(json.dumps(index))
    (tmp / "broken_index").mkdir()
    (tmp / "broken_index" / "model_index.json").write_text('{"_class_name": ')
    (tmp / "out").mkdir()
    np.savez(tmp / "one.npz", images=np.zeros((1, 8, 8), np.uint8))
    np.savez(tmp / "bool.npz", images=np.zeros((4, 8, 8), bool))


# (case, argv, pattern of the one-line error). ``{t}`` is the test's folder.
CLI_CASES = [
    ("batch_size 0", TRAIN + ["run.batch_size=0"], r"run\.batch_size must be ≥ 1, got 0"),
    ("batch_size negative", TRAIN + ["run.batch_size=-3"], r"run\.batch_size must be ≥ 1, got -3"),
    ("checkpoint_every 0", TRAIN + ["run.checkpoint_every=0"], r"run\.checkpoint_every must be ≥ 1"),
    ("log_every 0", TRAIN + ["run.log_every=0"], r"run\.log_every must be ≥ 1"),
    ("keep_checkpoints 0", TRAIN + ["run.keep_checkpoints=0"], r"run\.keep_checkpoints must be ≥ 1"),
    ("negative lr", TRAIN + ["optim.lr=-1e-3"], r"optim\.lr must be > 0"),
    ("negative generator lr", DISTILL + ["optim.lr_generator=-1"], r"optim\.lr_generator must be > 0"),
    ("zero fake lr", DISTILL + ["optim.lr_fake=0"], r"optim\.lr_fake must be > 0"),
    ("one beta", TRAIN + ["optim.betas=[0.9]"], r"optim\.betas must be two numbers"),
    ("beta ≥ 1", DISTILL + ["optim.betas=[0.9, 1.5]"], r"optim\.betas must be two numbers"),
    ("ema decay > 1", TRAIN + ["optim.ema_decay=1.5"], r"optim\.ema_decay must be in \[0, 1\]"),
    ("drop prob > 1", TRAIN + ["optim.cond_drop_prob=2"], r"optim\.cond_drop_prob must be in \[0, 1\]"),
    ("yaml syntax", ["train", "--config", "{t}/bad.yaml"], r"bad\.yaml: not valid YAML at line \d+"),
    ("missing config", ["train", "--config", "{t}/none.yaml"], r"config file not found: .*none\.yaml"),
    ("steps 0", TRAIN + ["run.steps=0"], r"run\.steps must be ≥ 1, got 0"),
    ("steps negative", TRAIN + ["run.steps=-5"], r"run\.steps must be ≥ 1, got -5"),
    ("steps fractional", TRAIN + ["run.steps=2.5"], r"run\.steps: expected an integer, got 2\.5"),
    ("steps text", TRAIN + ["run.steps=many"], r"run\.steps: expected an integer, got 'many'"),
    ("steps bool", TRAIN + ["run.steps=true"], r"run\.steps: expected an integer, got True"),
    ("eval samples 0 (distill)", DISTILL + ["eval.num_samples=0"], r"eval\.num_samples must be ≥ 1"),
    ("eval samples 0 (train)", TRAIN + ["eval.num_samples=0"], r"eval\.num_samples must be ≥ 1"),
    ("teacher steps 0", DISTILL + ["eval.teacher_steps=0"], r"eval\.teacher_steps must be ≥ 1"),
    ("divergence on dmd", DISTILL + ["method.name=dmd", "method.divergence=js"],
     r"method\.divergence: unknown option for dmd; allowed: \["),
    ("kernel backend", DISTILL + ["method.kernel_backend=foo"], r"method\.kernel_backend: .*'auto', 'eager'.*got 'foo'"),
    ("unknown method", DISTILL + ["method.name=nope"], r"method\.name: unknown 'nope'; choose one of \[.*'dmd'"),
    ("unknown method key", DISTILL + ["method.nmae=dmd"], r"method\.nmae: unknown option for f_distill; allowed: \["),
    ("fake updates 0", DISTILL + ["method.fake_updates_per_generator_update=0"],
     r"method\.fake_updates_per_generator_update: .*greater than or equal to 1, got 0"),
    ("ratio range", DISTILL + ["method.ratio.ratio_min=5", "method.ratio.ratio_max=1"], r"method\.ratio: need 0 ≤ ratio_min < ratio_max"),
    ("unknown divergence", DISTILL + ["method.divergence=jensen"], r"method\.divergence: unknown divergence 'jensen'"),
    ("sid alpha", DISTILL + ["method={name: sid, alpha: 0}"], r"method\.alpha: .*greater than 0, got 0"),
    ("sigma kind", DISTILL + ["sigma_generator.kind=weird"], r"sigma_generator\.kind: unknown 'weird'; choose one of \['auto'"),
    ("sigma index range", DISTILL + ["sigma_fake.kind=karras_index", "sigma_fake.min_index=900", "sigma_fake.max_index=100"],
     r"min_index ≤ max_index"),
    ("sigma_init", DISTILL + ["student.sigma_init=-1"], r"student\.sigma_init must be > 0"),
    ("guidance nan", DISTILL + ["teacher.guidance_scale=.nan"], r"teacher\.guidance_scale must be (a )?finite"),
    ("teacher source", DISTILL + ["teacher.source=hub:edm"], r"unknown teacher source 'hub:edm'"),
    ("one-step as teacher", DISTILL + ["teacher.source=pipeline:{t}/onestep", "data.source=toy:ring8_imbalanced"],
     r"is a one-step student \(OneStepPipeline\), not a multi-step teacher"),
    ("teacher folder missing", DISTILL + ["teacher.source=pipeline:{t}/none", "data.source=toy:ring8_imbalanced"],
     r"teacher pipeline not found"),
    ("mixed precision", TRAIN + ["run.mixed_precision=fp8"], r"run\.mixed_precision must be auto, no, bf16 or fp16"),
    ("channels_last", TRAIN + ["run.channels_last=maybe"], r"run\.channels_last must be auto, true or false, got .maybe."),
    ("keep freed memory", TRAIN + ["run.keep_freed_memory=always"],
     r"run\.keep_freed_memory must be auto, true or false, got .always."),
    ("grad clip", TRAIN + ["run.grad_clip=-1"], r"run\.grad_clip must be ≥ 0"),
    ("data source", TRAIN + ["data.source=cifar10"], r"unknown data source 'cifar10'"),
    ("data channels", TRAIN + ["data.channels=2"], r"data\.channels must be 1, 3 or null"),
    ("model kind", TRAIN + ["model.kind=transformer"], r"model\.kind must be auto, mlp, unet or unet_cond"),
    ("groups", TRAIN + ["model.block_out_channels=[30,64]"], r"divisible by model\.norm_num_groups"),
    ("dropout", TRAIN + ["model.dropout=1.5"], r"model\.dropout must be in \[0, 1\)"),
    ("empty output dir", TRAIN + ["run.output_dir="], r"run\.output_dir:? must not be (null|empty)"),
    ("resume and overwrite", TRAIN + ["--resume", "--overwrite"], r"run\.resume and run\.overwrite exclude each other"),
    ("resume without checkpoint", TRAIN + ["--resume"], r"--resume: no intact checkpoint in .*checkpoints"),
    ("nan data", TRAIN + ["data.source=npz:{t}/nan.npz", "model.block_out_channels=[8,16]"],
     r"1 of 8 images hold NaN or Inf values \(first: index 3\)"),
    ("labels count", TRAIN + ["data.source=npz:{t}/labels.npz"], r"5 labels for 8 images"),
    ("labels float", TRAIN + ["data.source=npz:{t}/float_labels.npz"], r"labels must be integers"),
    ("0-255 floats", TRAIN + ["data.source=npz:{t}/u255.npz"], r"float images must lie in \[-1, 1\], found 200"),
    ("sample negative", ["sample", "--pipeline", "{t}/onestep", "--num-samples", "-3"], r"--num-samples must be ≥ 1, got -3"),
    ("sample zero", ["sample", "--pipeline", "{t}/onestep", "--num-samples", "0"], r"--num-samples must be ≥ 1, got 0"),
    ("sample steps -1", ["sample", "--pipeline", "{t}/onestep", "--steps", "-1"], r"--steps must be ≥ 1, got -1"),
    ("sample steps 0", ["sample", "--pipeline", "{t}/onestep", "--steps", "0"], r"--steps must be ≥ 1, got 0"),
    ("sample not a pipeline", ["sample", "--pipeline", "{t}"], r"is not a saved pipeline \(no model_index\.json\)"),
    ("fid samples 0", ["fid", "{t}/imgs.npz", "{t}/imgs.npz", "--num-samples", "0"], r"--num-samples must be ≥ 1, got 0"),
    ("fid samples -5", ["fid", "{t}/imgs.npz", "{t}/imgs.npz", "--num-samples", "-5"], r"--num-samples must be ≥ 1, got -5"),
    ("garbage weights", ["fid", "{t}/imgs.npz", "{t}/imgs.npz", "--inception-weights", "{t}/garbage.pt"],
     r"cannot read Inception weights .*garbage\.pt: neither the FID Inception TorchScript"),
    ("reflected: data outside the box", TRAIN + ["objective=reflected", "data.source=toy:box_checkerboard",
                                                "reflected.box=[0, 0.5]"],
     r"data \(toy:box_checkerboard\) lies outside the declared box \[0, 0\.5\]: its values span \S+\.\.0\.9\d+"),
    ("reflected: [-1, 1] digits in a [0, 1] box", TRAIN + ["objective=reflected", "data.source=digits", "data.image_size=8"],
     r"data \(digits\) lies outside the declared box \[0, 1\]: its values span -1\.\.1"),
    ("reflected: sigma_min 0", TRAIN + ["objective=reflected", "reflected.sigma_min=0"],
     r"reflected: need 0 < sigma_min < sigma_max, got sigma_min=0"),
    ("reflected: box high ≤ low", TRAIN + ["objective=reflected", "reflected.box=[1, 0]"],
     r"reflected\.box needs high > low, got \[1, 0\]"),
    ("unknown objective", TRAIN + ["objective=flow"], r"objective must be one of \[.*'edm', 'gft', .*'reflected'\], "
     r"got 'flow'"),
    ("mirror_flow: data outside the simplex", TRAIN + ["objective=mirror_flow"],
     r"data \(toy:ring8_imbalanced\): \d+ of 4096 points lie outside the simplex"),
    ("pseudo_huber: c0 = 0", TRAIN + ["objective=pseudo_huber", "teacher_loss.huber_c0=0"],
     r"teacher_loss\.huber_c0 must be > 0, got 0"),
    ("reflected: unknown likelihood divergence", TRAIN + ["objective=reflected", "reflected.likelihood_divergence=trace"],
     r"reflected\.likelihood_divergence must be one of \('exact', 'hutchinson'\), got 'trace'"),
    ("CFG on an unconditional teacher", DISTILL + ["teacher.guidance_scale=2"],
     r"teacher\.guidance_scale=2\.0 needs a class-conditional teacher"),
    ("gan: features unknown", DISTILL + ["method.gan.features=critic"],
     r"method\.gan\.features: Input should be 'fake' or 'teacher', got 'critic'"),
    ("gan: layers unknown", DISTILL + ["method.gan.layers=every"],
     r"method\.gan\.layers: Input should be 'bottleneck' or 'all', got 'every'"),
    ("gan: teacher features without a teacher network", DISTILL + ["method.gan.features=teacher"],
     r"method\.gan\.features=teacher reads a teacher network's features; teacher\.source=analytic:ring8_imbalanced "
     r"has none"),
    ("gan: layers=all on an MLP", DISTILL + ["method.gan.layers=all"],
     r"method\.gan\.layers=all: MLPDenoiser has one feature layer"),
    ("gan: sida encoder discriminator on teacher features", DISTILL + ["method={name: sida, gan: {features: teacher}}"],
     r"method\.gan: discriminator 'encoder' is the fake network's own bottleneck \(no head\)"),
    ("gft: β outside (0, 1]", TRAIN + ["objective=gft", "data.source=toy:conditional2d", "guidance_free.beta_min=1.5"],
     r"guidance_free\.beta_min must be in \[0, 1\) \(β = 1/s ∈ \(0, 1\]\), got 1\.5"),
    ("gft: unlabelled data", TRAIN + ["objective=gft", "data.source=toy:ring8_imbalanced"],
     r"objective gft needs class labels, but data toy:ring8_imbalanced has none"),
    ("gft: init_from missing", TRAIN + ["objective=gft", "data.source=toy:conditional2d", "guidance_free.init_from={t}/nope"],
     r"nope"),
    ("stats without sigma", ["fid", "{t}/imgs.npz", "{t}/nosigma.npz", "--inception-weights", "{t}/garbage.pt"],
     r"(nosigma\.npz is not a statistics file \(needs 'mu' and 'sigma'|cannot read Inception weights)"),
]

# issue 21: values that passed validation and failed later, sizes, FID inputs, arguments checked late
FID = ["fid", "{t}/imgs.npz"]
CLI_CASES += [
    ("lr inf", TRAIN + ["optim.lr=.inf"], r"optim\.lr must be a finite number, got inf"),
    ("lr nan", TRAIN + ["optim.lr=.nan"], r"optim\.lr must be a finite number, got nan"),
    ("sigma_init inf", DISTILL + ["student.sigma_init=.inf"], r"student\.sigma_init must be a finite number, got inf"),
    ("grad clip inf", TRAIN + ["run.grad_clip=.inf"], r"run\.grad_clip must be a finite number"),
    ("seed -1", TRAIN + ["run.seed=-1"], r"run\.seed must be in \[0, 2³² − 1\].*got -1"),
    ("seed 2**32", TRAIN + ["run.seed=4294967296"], r"run\.seed must be in \[0, 2³² − 1\]"),
    ("batch 10**9", TRAIN + ["run.batch_size=1000000000"],
     r"run\.batch_size=1000000000 of samples shaped \[2\] needs at least [\d,.]+ GiB of memory, more than this machine's"),
    ("image_size 100000", TRAIN + ["data.source=digits", "data.image_size=100000"],
     r"data\.image_size=100000 for 1797 images of 1 channel\(s\) needs at least [\d,.]+ GiB"),
    ("norm groups 0", TRAIN + ["model.norm_num_groups=0"], r"model\.norm_num_groups must be ≥ 1, got 0"),
    (".npy as npz: data", TRAIN + ["data.source=npz:{t}/array.npy"],
     r"array\.npy is a single \.npy array, not an \.npz archive"),
    ("corrupt npz: data", TRAIN + ["data.source=npz:{t}/corrupt.npz"], r"cannot read .*corrupt\.npz as an \.npz archive"),
    ("fid: missing GEN before REF features", ["fid", "{t}/nope", "dataset:mnist"], r"GEN not found: .*nope"),
    ("fid: missing REF", FID + ["{t}/nope"], r"REF not found: .*nope"),
    ("fid: corrupt npz", ["fid", "{t}/corrupt.npz", "{t}/imgs.npz"], r"cannot read .*corrupt\.npz as an \.npz archive"),
    ("fid: .npy", ["fid", "{t}/array.npy", "{t}/imgs.npz"], r"array\.npy is a single \.npy array"),
    ("fid: float 0-255", ["fid", "{t}/u255.npz", "{t}/imgs.npz"],
     r"values span 200\.\.200, outside the declared range \[-1, 1\].*--float-range"),
    ("fid: float 0-255 as 0,1", ["fid", "{t}/u255.npz", "{t}/imgs.npz", "--float-range", "0,1"],
     r"outside the declared range \[0, 1\]"),
    ("fid: int64 above 255", ["fid", "{t}/int64.npz", "{t}/imgs.npz"],
     r"values span 300\.\.300, outside the declared range \[0, 255\]"),
    ("fid: NaN", ["fid", "{t}/nan_fid.npz", "{t}/imgs.npz"], r"4 of 4 images hold NaN or Inf values \(first: index 0\)"),
    ("fid: points", ["fid", "{t}/points.npz", "{t}/imgs.npz"], r"value_range \[nan, nan\] does not declare an image range"),
    ("fid: --json a folder", FID + ["{t}/imgs.npz", "--json", "{t}/out"], r"out is a folder; --json must name a file"),
    ("fid: --json exists", FID + ["{t}/imgs.npz", "--json", "{t}/imgs.npz"],
     r"imgs\.npz already exists; pass --overwrite to replace it"),
    ("fid: --kid with statistics", FID + ["{t}/stats.npz", "--kid"], r"KID and precision/recall need reference images"),
    ("fid: FID∞ too few", FID + ["{t}/imgs.npz", "--fid-infinity"],
     r"FID∞ needs at least --fid-inf-min=5000 generated images; GEN .*imgs\.npz gives 4"),
    ("fid: --kid on clean-fid", FID + ["{t}/imgs.npz", "--backend", "clean-fid", "--kid"],
     r"--kid: only the gendiv back end computes these"),
    ("fid: statistics as GEN", ["fid", "{t}/stats.npz", "{t}/imgs.npz"], r"a statistics file can only be REF"),
    ("fid: LDM (VQ-VAE) folder", ["fid", "{t}/ldm", "{t}/imgs.npz", "--num-samples", "4"],
     r"ldm is a LDMPipeline \(latent, text-conditioned or transformer model\), which gendiv cannot use for FID"),
    ("fid: pipeline without --num-samples", ["fid", "{t}/onestep", "{t}/imgs.npz"],
     r"is a pipeline: give the number of samples to generate \(--num-samples\)"),
    ("fid: point pipeline", ["fid", "{t}/onestep", "{t}/imgs.npz", "--num-samples", "4"],
     r"generates points of shape \(2,\), not images"),
    ("sample: LDM (VQ-VAE) folder", ["sample", "--pipeline", "{t}/ldm"],
     r"is a LDMPipeline \(latent, text-conditioned or transformer model\), which gendiv cannot use for gendiv sample"),
    ("sample: DiT folder", ["sample", "--pipeline", "{t}/dit"], r"is a DiTPipeline \(latent, text-conditioned"),
    ("sample: broken model_index", ["sample", "--pipeline", "{t}/broken_index"], r"model_index\.json is not valid JSON"),
    ("sample: --prompt on a class model", ["sample", "--pipeline", "{t}/onestep", "--prompt", "a cat"],
     r"--prompt is for text-to-image pipelines"),
    ("fid-stats: --out exists", ["fid-stats", "{t}/imgs.npz", "--out", "{t}/stats.npz"],
     r"stats\.npz already exists; pass --overwrite"),
    # a new user's sweep of more inputs of these kinds
    ("tracker not installed", TRAIN + ["run.trackers=[wandb]"], r"run\.trackers: wandb is not installed"),
    ("unknown tracker", TRAIN + ["run.trackers=[nope]"], r"run\.trackers: unknown tracker 'nope'"),
    ("output_dir a file", TRAIN + ["run.output_dir={t}/imgs.npz"], r"run\.output_dir .*imgs\.npz is a file"),
    ("folder: without a path", TRAIN + ["data.source='folder:'"], r"data\.source='folder:' names no path"),
    ("sample: label on unconditional", ["sample", "--pipeline", "{t}/onestep", "--class-label", "3", "--out", "{t}/s"],
     r"refused the arguments .*class_labels given but the model is unconditional"),
    ("sample: unknown --truth", ["sample", "--pipeline", "{t}/onestep", "--truth", "nope", "--out", "{t}/s"],
     r"--truth: unknown toy distribution 'nope'"),
    ("fid-stats: --out without .npz", ["fid-stats", "{t}/imgs.npz", "--out", "{t}/stats"], r"must end in \.npz"),
    ("fid: fewer images than asked", FID + ["{t}/imgs.npz", "--num-samples", "10"],
     r"holds 4 images, fewer than the 10 asked for \(--num-samples\)"),
    ("fid: REF pipeline without --num-ref", FID + ["{t}/onestep"], r"REF .*onestep is a pipeline: .*\(--num-ref\)"),
    ("fid: one image", ["fid", "{t}/one.npz", "{t}/imgs.npz"], r"gives 1 image\(s\); statistics need at least 2"),
    ("fid: bool images", ["fid", "{t}/bool.npz", "{t}/imgs.npz"], r"images must be integers \(0\.\.255\) or floats"),
    ("switch not a bool", TRAIN + ["data.use_labels=maybe"], r"data\.use_labels: expected true/false, got 'maybe'"),
    ("unknown toy", TRAIN + ["data.source=toy:nope"], r"data\.source: unknown toy distribution 'nope'"),
    ("unknown analytic teacher", DISTILL + ["teacher.source=analytic:nope"],
     r"teacher\.source: unknown toy distribution 'nope'"),
    ("unet on points", TRAIN + ["model.kind=unet"], r"model\.kind=unet needs image data"),
    ("mlp on images", TRAIN + ["model.kind=mlp", "data.source=digits", "data.image_size=8"],
     r"model\.kind=mlp needs point data"),
    ("prediction type", TRAIN + ["model.prediction_type=sample2"], r"model: unknown prediction_type 'sample2'"),
    ("levels vs size", TRAIN + ["data.source=digits", "data.image_size=3", "model.block_out_channels=[8,16,32]"],
     r"image size 3×3 is not divisible by 2\^2 for 3 UNet levels"),
    ("sample: too many", ["sample", "--pipeline", "{t}/onestep", "--num-samples", "100000000000", "--out", "{t}/s"],
     r"--num-samples 100000000000 of samples shaped \[2\] needs at least [\d,.]+ GiB"),
]
if not torch.cuda.is_available():
    CLI_CASES.append(("fp16 on a CPU", TRAIN + ["run.mixed_precision=fp16"],
                      r"run\.mixed_precision=fp16 needs a CUDA GPU; this machine has none"))


@pytest.mark.parametrize("case, argv, pattern", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_clear_line_and_exit_2(case, argv, pattern, tmp_path, capsys):
    _files(tmp_path)
    argv = [a.replace("{t}", str(tmp_path)) for a in argv]
    if argv[0] in ("train", "distill") and not any(a.startswith("run.output_dir") for a in argv):
        argv.append(f"run.output_dir={tmp_path / 'run'}")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    import re

    assert re.search(pattern.replace("{t}", str(tmp_path)), err), err


def test_statistics_without_sigma_is_named(tmp_path):
    from gendiv.metrics.frechet import FeatureStats

    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(4))
    with pytest.raises(ValueError, match=r"is not a statistics file \(needs 'mu' and 'sigma'"):
        FeatureStats.load(tmp_path / "nosigma.npz")


def test_integral_float_steps_are_accepted(tmp_path):
    from gendiv.training import TrainConfig, load_config

    assert load_config(TrainConfig, None, ["run.steps=1e1"]).run.steps == 10  # documented: whole numbers parse


def _one_step_pipe(num_classes=None):
    from gendiv import MLPDenoiser, OneStepGenerator, OneStepPipeline

    return OneStepPipeline(student=OneStepGenerator.from_denoiser(MLPDenoiser(dim=2, hidden=8, depth=1,
                                                                              num_classes=num_classes)))


def _edm_pipe(num_classes=None):
    from gendiv import GenDivPipeline, MLPDenoiser

    pipe = GenDivPipeline.from_denoiser(MLPDenoiser(dim=2, hidden=8, depth=1, num_classes=num_classes))
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIPELINE_CASES = [
    ("one-step batch 0", _one_step_pipe, {"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ("one-step batch -1", _one_step_pipe, {"batch_size": -1}, r"batch_size must be a positive integer, got -1"),
    ("one-step batch float", _one_step_pipe, {"batch_size": 2.5}, r"batch_size must be a positive integer, got 2\.5"),
    ("edm batch 0", _edm_pipe, {"batch_size": 0}, r"batch_size must be a positive integer"),
    ("edm batch float", _edm_pipe, {"batch_size": 1.0}, r"batch_size must be a positive integer"),
    ("edm steps 0", _edm_pipe, {"batch_size": 2, "num_inference_steps": 0}, r"num_inference_steps must be a positive"),
    ("float labels", lambda: _one_step_pipe(3), {"batch_size": 2, "class_labels": [0.7, 1.2]},
     r"class_labels must be integers"),
    ("label out of range", lambda: _edm_pipe(3), {"batch_size": 2, "class_labels": [0, 3]}, r"out of range \[0, 3\)"),
    ("labels on unconditional", _one_step_pipe, {"batch_size": 2, "class_labels": 1}, r"model is unconditional"),
    ("nan latents", _one_step_pipe, {"batch_size": 2, "latents": torch.full((2, 2), float("nan"))},
     r"latents hold NaN or Inf"),
    ("latents shape", _edm_pipe, {"batch_size": 2, "latents": torch.zeros(3, 2)}, r"latents must have shape \(2, 2\)"),
    ("pil for points", _one_step_pipe, {"batch_size": 2, "output_type": "pil"}, r"output_type='pil' needs image data"),
    # issue 20: diffusers' arguments
    ("generator list length", _one_step_pipe, {"batch_size": 3, "generator": [torch.Generator()] * 2},
     r"generator list has 2 generators for a batch of 3"),
    ("generator not a generator", _edm_pipe, {"batch_size": 1, "generator": 0}, r"generator must be a torch\.Generator"),
    ("images per prompt 0", _edm_pipe, {"num_images_per_prompt": 0}, r"num_images_per_prompt must be a positive"),
    ("callback tensor name", _edm_pipe, {"callback_on_step_end": lambda *a: {},
                                         "callback_on_step_end_tensor_inputs": ["noise"]}, r"\['noise'\] are not tensors"),
    ("callback returns None", _edm_pipe, {"num_inference_steps": 2, "callback_on_step_end": lambda *a: None},
     r"callback_on_step_end must return a dict"),
]


@pytest.mark.parametrize("case, make, kwargs, pattern", PIPELINE_CASES, ids=[c[0] for c in PIPELINE_CASES])
def test_pipeline_bad_input_names_the_argument(case, make, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()(**kwargs)


def test_the_table_covers_at_least_fifty_cases():
    assert len(CLI_CASES) + len(PIPELINE_CASES) >= 50


# -------------------------------------------------------------------------------------------------
# Nothing is lost
# -------------------------------------------------------------------------------------------------
def test_rerun_into_an_existing_run_loses_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = TRAIN + ["run.steps=4", "run.checkpoint_every=2", f"run.output_dir={out}"]
    main(argv)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(TRAIN + ["run.steps=2", f"run.output_dir={out}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--resume" in err and "--overwrite" in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # not a byte changed
    main(TRAIN + ["run.steps=2", f"run.output_dir={out}", "--overwrite"])
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1
    assert {p.relative_to(moved[0]): p.read_bytes() for p in moved[0].rglob("*") if p.is_file()} == before
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and (out / "checkpoints" / "step-00000002").is_dir()
    assert f"moved the previous run in {out}" in capsys.readouterr().out


def test_resume_refuses_a_changed_config_and_says_what_differs(tmp_path, capsys):
    out = tmp_path / "run"
    main(TRAIN + ["run.steps=4", "run.checkpoint_every=2", "run.stop_after=2", f"run.output_dir={out}"])
    capsys.readouterr()
    for change, named in (("run.batch_size=8", r"run\.batch_size: 256 → 8"), ("optim.lr=0.01", r"optim\.lr: 0\.002 → 0\.01"),
                          ("model.hidden=64", r"model\.hidden: 128 → 64")):
        with pytest.raises(SystemExit):
            main(TRAIN + ["run.steps=4", f"run.output_dir={out}", "--resume", change])
        err = capsys.readouterr().err
        import re

        assert re.search(named, err) and "cannot resume" in err, err
    main(TRAIN + ["run.steps=4", f"run.output_dir={out}", "--resume", "eval.num_samples=8"])  # eval/steps may change
    assert "resumed from step 2" in capsys.readouterr().out


def test_resume_from_a_checkpoint_without_a_saved_config_still_fails_clearly(tmp_path, capsys):
    """Checkpoints written before configs were saved with them: a model mismatch is one clear line, not torch's."""
    from gendiv.training.checkpoint import write_manifest

    out = tmp_path / "run"
    main(TRAIN + ["run.steps=2", "run.checkpoint_every=2", f"run.output_dir={out}"])
    ckpt = out / "checkpoints" / "step-00000002"
    (ckpt / "config.json").unlink()
    write_manifest(ckpt)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(TRAIN + ["run.steps=4", f"run.output_dir={out}", "--resume", "model.hidden=64"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "does not fit this run's networks" in err and "Traceback" not in err
