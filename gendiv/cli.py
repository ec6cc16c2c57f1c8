"""``gendiv train | distill | sample``: the command line over gendiv.training and the pipelines.

Config files are YAML (see configs/); any ``section.key=value`` after the options overrides them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train(args):
    from .training import TrainConfig, load_config, train

    cfg = load_config(TrainConfig, args.config, args.overrides)
    summary = train(cfg)
    print(json.dumps(summary, indent=1))


def _distill(args):
    from .training import DistillConfig, distill, load_config

    cfg = load_config(DistillConfig, args.config, args.overrides)
    summary = distill(cfg)
    print(json.dumps(summary, indent=1))


def _sample(args):
    import numpy as np
    import torch

    from .pipelines import GenDivPipeline, OneStepPipeline
    from .plotting import image_grid, scatter_plot

    path = Path(args.pipeline)
    if not (path / "model_index.json").is_file():
        raise SystemExit(f"error: {path} is not a saved pipeline (no model_index.json)")
    one_step = json.loads((path / "model_index.json").read_text())["_class_name"] == "OneStepPipeline"
    pipe = (OneStepPipeline if one_step else GenDivPipeline).from_pretrained(str(path))
    kwargs = {} if one_step else {"num_inference_steps": args.steps}
    out = pipe(batch_size=args.num_samples, class_labels=args.class_label, output_type="pt",
               generator=torch.Generator().manual_seed(args.seed), **kwargs).images
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest.with_suffix(".npz"), samples=out.numpy())
    if out.ndim == 2:
        scatter_plot(dest.with_suffix(".png"), {"samples": out})
    else:
        image_grid(dest.with_suffix(".png"), out * 2 - 1)
    print(f"wrote {dest.with_suffix('.npz')} and {dest.with_suffix('.png')}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gendiv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a diffusion model (teacher) with the EDM loss")
    t.add_argument("--config", help="YAML config (configs/*.yaml); defaults: the 2-D imbalanced ring")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. run.steps=500 data.source=digits")
    t.set_defaults(func=_train)

    d = sub.add_parser("distill", help="distil a teacher into a one-step generator (DMD, DMD2, Diff-Instruct, f-distill)")
    d.add_argument("--config", help="YAML config (configs/distill_*.yaml); defaults: f-distill (JS) on the analytic ring")
    d.add_argument("overrides", nargs="*", help="section.key=value, e.g. method.name=dmd method.divergence=forward_kl")
    d.set_defaults(func=_distill)

    s = sub.add_parser("sample", help="sample a saved GenDivPipeline or OneStepPipeline to .npz + .png")
    s.add_argument("--pipeline", required=True, help="folder written by save_pretrained (e.g. runs/teacher/pipeline)")
    s.add_argument("--num-samples", type=int, default=64)
    s.add_argument("--steps", type=int, default=18, help="scheduler steps (multi-step pipelines)")
    s.add_argument("--class-label", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples/samples", help="output path without suffix")
    s.set_defaults(func=_sample)
    return p


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    from .training import CheckpointError, ConfigError

    try:
        args.func(args)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


if __name__ == "__main__":
    main()
