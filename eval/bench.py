"""gendiv benchmark harness: runs registered benchmarks, prints tables, writes Markdown (and plots) to
eval/results/, and with --update-readme rewrites the README's marked sections, so that every figure in the
README comes from a run of this script.

    python eval/bench.py                       # all benchmarks
    python eval/bench.py kernel step --update-readme
    python eval/bench.py toy_methods --steps 15000

Timings are ratios measured within one run on one machine (the printed header says which); they are not
asserted anywhere.
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
BENCHMARKS = {}


def benchmark(name):
    def register(fn):
        BENCHMARKS[name] = fn
        return fn

    return register


def timed(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds per call (CUDA-synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_together(fns: dict, repeats: int = 10, warmup: int = 2) -> dict:
    """Median seconds per call of each function, measured in interleaved rounds (A B C A B C ...), so that drift in
    the machine's speed during the run hits every variant alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, t in timed_round(fns).items():
            samples[k].append(t)
    return {k: statistics.median(v) for k, v in samples.items()}


def timed_round(fns: dict) -> dict:
    """Seconds of one call of each function, in order (CUDA-synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = {}
    for k, fn in fns.items():
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times[k] = time.perf_counter() - t
    return times


def cpu_kind() -> str:
    """The CPU's model and the widest matrix/vector extension it has (AMX, AVX512-BF16, AVX-512, AVX2): tables from
    machines of different kinds are not comparable."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = next((name for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"),
                                        ("avx2", "AVX2")) if flag in flags), "no AVX2")
    return f"{model or 'unknown CPU'} ({isa})"


def machine() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"{cpu_kind()}, {torch.get_num_threads()} threads"
    return f"{dev}, torch {torch.__version__}, {platform.machine()}"


def table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
@benchmark("kernel")
def bench_kernel(args) -> str:
    """At 64×3×32×32: the score-difference kernel alone (eager, compiled, C++ on the CPU, Triton on CUDA), and
    f-distill's whole per-step weighting (ratio from logits, clamp, σ bins, h, batch mean, DMD normaliser, weighted
    difference) eager vs one compiled region vs one C++ function (CPU) / two Triton kernels (CUDA); all against the
    one-pass floor measured in the same run (``torch.addcmul`` over the same three tensors)."""
    from gendiv.kernels import native_cpu, triton_available, weighted_difference
    from gendiv.distill import FDistill
    from gendiv.distill import StepContext

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)
    x, dt, df = (torch.randn(64, 3, 32, 32, device=dev, generator=g) for _ in range(3))
    w = torch.rand(64, device=dev, generator=g)
    floor = timed(lambda: torch.addcmul(x, dt, df), repeats=200)
    native = (["triton"] if triton_available() and dev == "cuda" else []) + (["cpp"] if dev == "cpu" and native_cpu.available() else [])
    backends = ["eager", "compile"] + native
    ref = weighted_difference(x, dt, df, w, backend="eager")
    rows, t_eager = [], None
    moved = 4 * x.numel() * 4  # read x, Dᵀ, Dᶠ; write g (fp32)
    for b in backends:
        out = weighted_difference(x, dt, df, w, backend=b)
        err = float((out - ref).abs().max())
        t = timed(lambda: weighted_difference(x, dt, df, w, backend=b), repeats=200)
        t_eager = t_eager or t
        rows.append([f"difference only, {b}", t * 1e6, t_eager / t, t / floor, moved / t / 1e9, err])
    ctx = StepContext(x=x, sigma=torch.rand(64, device=dev) * 3, x_sigma=x, cond=None, d_teacher=dt, d_fake=df,
                      logits=2 * torch.randn(64, device=dev))
    methods = {b: FDistill("jensen_shannon", kernel_backend=b) for b in ("eager", "compile", *native)}
    ref = methods["eager"].pseudo_gradient(ctx)
    labels = {"eager": "eager", "compile": "one compiled region", "cpp": "one C++ function", "triton": "two Triton kernels"}
    t_eager = None
    for b, m in methods.items():
        err = float((m.pseudo_gradient(ctx) - ref).abs().max())
        t = timed(lambda: m.pseudo_gradient(ctx), repeats=200)
        t_eager = t_eager or t
        rows.append([f"f-distill weighting, {labels[b]}", t * 1e6, t_eager / t, t / floor, moved / t / 1e9, err])
    rows.append(["one-pass floor (addcmul)", floor * 1e6, "", 1.0, moved / floor / 1e9, ""])
    return (f"64×3×32×32, {machine()}\n\n"
            + table(["what", "µs/call", "speed-up vs eager", "× floor", "effective GB/s", "max |Δ| vs eager"], rows))


def _tiny_image_setup(batch: int = 16, channels_last: bool = False):
    """Teacher, fake and generator: the same tiny UNet (3×32×32) so passes are comparable."""
    from diffusers import UNet2DModel

    from gendiv.models import OneStepGenerator, UNetDenoiser
    from gendiv.training.performance import apply_memory_format

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)
    teacher = UNetDenoiser.from_unet(unet).eval().requires_grad_(False)
    fake = copy.deepcopy(teacher).requires_grad_(True).train()
    gen = OneStepGenerator.from_denoiser(teacher, 80.0).requires_grad_(True).train()
    for m in (teacher, fake, gen):
        apply_memory_format(m, channels_last)
    return teacher, fake, gen, batch


def _step_nets(channels_last: bool, fused):
    from gendiv.training.performance import adamw

    teacher, fake, gen, bs = _tiny_image_setup(channels_last=channels_last)
    opt_g = adamw(gen.parameters(), 1e-6, (0.9, 0.99), 0.0, fused)
    opt_f = adamw(fake.parameters(), 1e-6, (0.9, 0.99), 0.0, fused)
    return teacher, fake, gen, bs, opt_g, opt_f, torch.randn(bs, 3, 32, 32)


def _autocast(precision: str):
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16,
                          enabled=precision == "bf16")


@functools.cache
def _device_module():
    """eval/device.py, loaded once: its DMD steps are the ones timed here too."""
    return eval_module("device")


def _gendiv_step(net, precision: str, reuse: bool):
    """gendiv's DMD step as the trainer runs it: score_difference_step, the method's loss, denoising_loss."""
    teacher, fake, gen, _, opt_g, opt_f, z = net
    _device_module().dmd_step((teacher, fake, gen), (opt_g, opt_f), z, str(z.device), precision, reuse)


def _dmd2_reference_step(net, precision: str):
    """The DMD2 code path, written out (eval/device.py's plain loop, on this machine)."""
    teacher, fake, gen, _, opt_g, opt_f, z = net
    _device_module().plain_dmd2_step((teacher, fake, gen), (opt_g, opt_f), z, str(z.device), precision)


def _network_passes(net, precision: str, reuse: bool):
    """Generator forward+backward, teacher forward, fake forward (no grad), [generator forward (no grad)], fake
    forward+backward: the passes no implementation of that configuration can avoid (a step's floor)."""
    teacher, fake, gen, bs, _, _, z = net
    sigma = torch.full((bs,), 1.0)
    with _autocast(precision):
        x = gen(z)
        x.float().sum().backward()
        with torch.no_grad():
            teacher(x.detach(), sigma)
            fake(x.detach(), sigma)
            xf = x.detach() if reuse else gen(z)
        fake(xf, sigma).float().sum().backward()
    gen.zero_grad(set_to_none=True)
    fake.zero_grad(set_to_none=True)


def _step_worker(conn, gendiv_defaults: bool):
    """One process of the step benchmark. ``run.keep_freed_memory`` changes the process's allocator for good, so
    the plain rows run in a process left as PyTorch starts (``gendiv_defaults`` False) and the default-configuration
    rows in one set up as gendiv's trainer sets it up; the parent alternates rounds between the two."""
    from gendiv.training.performance import keep_freed_memory, native_bf16, resolve_mixed_precision

    torch.manual_seed(0)
    if gendiv_defaults:
        kept = keep_freed_memory("auto")
        precision = resolve_mixed_precision("auto", image_data=True)
        net, plain = _step_nets(True, "auto"), _step_nets(False, False)
        fns = {"default": lambda: _gendiv_step(net, precision, True),
               "floor default": lambda: _network_passes(net, precision, True),
               "plain kept": lambda: _dmd2_reference_step(plain, "no")}
        info = {"precision": precision, "fused": bool(net[4].defaults.get("fused")), "kept": kept}
    else:
        net = _step_nets(False, False)
        bf16 = native_bf16("cuda" if torch.cuda.is_available() else "cpu")
        fns = {f"plain {p}": (lambda p=p: _dmd2_reference_step(net, p)) for p in ["no"] + (["bf16"] if bf16 else [])}
        fns["off"] = lambda: _gendiv_step(net, "no", False)
        fns["floor off"] = lambda: _network_passes(net, "no", False)
        info = {}
    for fn in fns.values():
        for _ in range(2):
            fn()
    conn.send(info)
    while (msg := conn.recv()) == "round":
        times, faults = {}, {}
        for key, fn in fns.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times.update(timed_round({key: fn}))
            faults[key] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        conn.send((times, faults))
    if msg == "parts" and gendiv_defaults:
        conn.send(_step_parts(net, plain))


def _step_parts(cl_net, plain_net) -> list:
    """What each switch does to the parts of a step, in the process of the default rows: one AdamW update of the
    generator (fused vs PyTorch's default for these tensors), and single passes without vs with channels-last."""
    sigma = torch.rand(cl_net[3]) * 3
    z = cl_net[6]
    params = list(cl_net[2].parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    default_opt = torch.optim.AdamW(params, lr=1e-6)

    def no_grad_forward(net):
        with torch.no_grad():
            net[0](z, sigma)

    def forward_backward(net):
        net[1](z, sigma).sum().backward()
        net[1].zero_grad(set_to_none=True)

    t = timed_together({"fused": cl_net[4].step, "default": default_opt.step,
                        "fwd nchw": lambda: no_grad_forward(plain_net), "fwd cl": lambda: no_grad_forward(cl_net),
                        "fb nchw": lambda: forward_backward(plain_net), "fb cl": lambda: forward_backward(cl_net)}, 20, 2)
    n = sum(p.numel() for p in params) / 1e6
    return [[f"AdamW update ({n:.2f} M parameters): PyTorch's default here → fused", t["default"], t["fused"]],
            ["teacher forward, no grad: NCHW → channels-last", t["fwd nchw"], t["fwd cl"]],
            ["fake forward + backward: NCHW → channels-last", t["fb nchw"], t["fb cl"]]]


@benchmark("step")
def bench_step(args) -> str:
    """One DMD generator + fake-score step on a tiny UNet (3×32×32, batch 16): gendiv's step in its default
    configuration (precision auto, channels-last, fused AdamW, the fake update reusing the generator step's samples,
    freed memory kept in the process) and with every switch off, against a plain eager DMD2-style loop in fp32 and
    in bf16 autocast, and against the sum of each configuration's unavoidable network passes (its floor: the rest is
    outside-network overhead). Two processes (see ``_step_worker``), measured in alternating rounds."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    workers, info = [], {}
    for defaults in (False, True):  # one after the other: warm-ups do not overlap
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_step_worker, args=(child, defaults), daemon=True)
        proc.start()
        info.update(parent.recv())
        workers.append((proc, parent))
    samples: dict[str, list[float]] = {}
    fault_samples: dict[str, list[int]] = {}
    for _ in range(args.repeats):
        for _, conn in workers:
            conn.send("round")
            times, faults = conn.recv()
            for key in times:
                samples.setdefault(key, []).append(times[key])
                fault_samples.setdefault(key, []).append(faults[key])
    parts = []
    for defaults, (proc, conn) in zip((False, True), workers):
        conn.send("parts")
        if defaults:
            parts = conn.recv()
        proc.join()
    t = {k: statistics.median(v) for k, v in samples.items()}
    faults = {k: statistics.median(v) for k, v in fault_samples.items()}

    precision = "bf16" if info["precision"] == "bf16" else "fp32"
    switches = ", ".join([precision, "channels-last", "fused AdamW" if info["fused"] else "AdamW (no fused kernel)",
                          "reused samples"] + (["freed memory kept"] if info["kept"] else []))
    rows = [["plain DMD2-style loop, fp32", "plain no"]]
    if "plain bf16" in t:
        rows.append(["plain DMD2-style loop, bf16 autocast", "plain bf16"])
    rows += [["gendiv, every switch off (fp32)", "off"], [f"gendiv default ({switches})", "default"]]
    if info["kept"]:
        rows.append(["plain DMD2-style loop, fp32, freed memory kept (gendiv's allocator setting alone)", "plain kept"])
    plain_fp32 = t["plain no"]
    plain_same = t.get("plain bf16", plain_fp32) if precision == "bf16" else plain_fp32
    note = "" if "plain bf16" in t else ("\n\nbf16 is not native on this CPU (no AMX/AVX512-BF16 in oneDNN): "
                                         "autocast would emulate it many times slower, so `auto` keeps fp32 here "
                                         "and the bf16 rows are not run.")
    from gendiv.training.performance import CPU_FLAGS_OF_INTEREST, cpu_flags, native_bf16

    flags = (f"CPU flags found: {' '.join(cpu_flags()) or 'none of ' + '/'.join(CPU_FLAGS_OF_INTEREST)}; bf16 "
             f"{'native' if native_bf16('cpu') else 'emulated'} in oneDNN")
    return (f"One DMD generator + fake-score step, tiny UNet 3×32×32 (block_out 32/64/64), batch 16, {machine()}, "
            f"median of {args.repeats} alternating rounds. {flags}\n\n"
            + table(["step", "ms/step", "throughput vs plain fp32", "page faults/step"],
                    [[label, t[k] * 1e3, plain_fp32 / t[k], round(faults[k])] for label, k in rows])
            + f"\n\ngendiv default vs plain loop in fp32: {plain_fp32 / t['default']:.2f}×; vs plain loop at the same "
              f"precision: {plain_same / t['default']:.2f}×. Outside-network overhead (step time over the sum of its "
              f"network passes, same configuration and process): default {100 * (t['default'] / t['floor default'] - 1):.1f}%, "
              f"every switch off {100 * (t['off'] / t['floor off'] - 1):.1f}%."
            + "\n\nParts of a step, same process as the default rows (median of 20 interleaved calls):\n\n"
            + table(["part: before → after", "ms before", "ms after", "speed-up"],
                    [[label, a * 1e3, b * 1e3, a / b] for label, a, b in parts]) + note)


@benchmark("threads")
def bench_threads(args) -> str:
    """The main job and the tiny-UNet step by thread count, alone and beside one busy process (eval/threads.py)."""
    return eval_module("threads").run(args, sys.modules[__name__])


TOY_RUNS = [  # (row label, method section) — every method at the same budget and update ratio
    ("diff_instruct", {"name": "diff_instruct"}),
    ("dmd", {"name": "dmd"}),
    ("dmd2", {"name": "dmd2"}),
    ("f_distill (reverse_kl)", {"name": "f_distill", "divergence": "reverse_kl"}),
    ("f_distill (jensen_shannon)", {"name": "f_distill", "divergence": "jensen_shannon"}),
    ("f_distill (forward_kl)", {"name": "f_distill", "divergence": "forward_kl"}),
    ("sid (α = 1.2)", {"name": "sid"}),
    ("sida (encoder discriminator)", {"name": "sida"}),
    ("uni_instruct (reverse_kl)", {"name": "uni_instruct", "divergence": "reverse_kl"}),
    ("uni_instruct (forward_kl)", {"name": "uni_instruct", "divergence": "forward_kl"}),
    ("uni_instruct (jensen_shannon)", {"name": "uni_instruct", "divergence": "jensen_shannon"}),
    ("uni_instruct (jeffreys)", {"name": "uni_instruct", "divergence": "jeffreys"}),
    ("uni_instruct (forward_kl after reverse_kl)", {"name": "uni_instruct", "divergence_schedule": "warm_start"}),
    ("smt (from data alone, no teacher)", {"name": "smt"}),
    ("smd", {"name": "smd"}),
]
NO_TEACHER = {"smt"}  # methods run with teacher.source=none and the ring's samples as data


def _toy_run(job: dict) -> dict:
    """One distillation on the ring in a worker process with a fixed thread count; returns its evaluation."""
    import shutil

    torch.set_num_threads(job["threads"])
    from gendiv.training import DistillConfig, distill, load_config

    out = Path(job["out"])
    if out.exists():  # the benchmark's own scratch folder from an earlier run of this benchmark
        shutil.rmtree(out)
    method = dict(job["method"], fake_updates_per_generator_update=2)
    if method.get("divergence_schedule") == "warm_start":
        method["divergence_schedule"] = [[0, "reverse_kl"], [job["steps"] // 2, "forward_kl"]]
    overrides = [f"run.output_dir={out}", "run.progress=false", f"run.steps={job['steps']}", f"run.seed={job['seed']}",
                 f"run.checkpoint_every={job['steps']}", "method=" + json.dumps(method)]
    if method["name"] in NO_TEACHER:
        overrides += ["teacher.source=none", "data.source=toy:ring8_imbalanced"]
    cfg = load_config(DistillConfig, ROOT / "configs" / "distill_ring.yaml", overrides)
    t = time.time()
    distill(cfg)
    result = json.loads((out / "eval_final.json").read_text())
    return {"label": job["label"], "seed": job["seed"], "student": result["student"], "teacher": result.get("teacher"),
            "seconds": time.time() - t, "plot": str(out / "samples_final.png")}


def _mean_spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3g} ± {spread:.2g}"


@benchmark("toy_methods")
def bench_toy_methods(args) -> str:
    """Each method's one-step student on the imbalanced ring after a fixed budget, next to the teacher's
    35-NFE sampler (analytic teacher, exact metrics): mean ± standard deviation over ``--seeds`` seeds."""
    import concurrent.futures
    import multiprocessing
    import os

    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    out_root = ROOT / "runs" / "bench_toy_methods"
    todo = [{"label": label, "method": method, "seed": seed, "steps": args.steps, "threads": threads,
             "out": str(out_root / re.sub(r"[^a-z0-9_]+", "_", label.lower()).strip("_") / f"seed{seed}")}
            for label, method in TOY_RUNS for seed in range(args.seeds)
            if not args.rows or any(r in label for r in args.rows.split(","))]
    # --rows reruns some rows and keeps the others from the last run (same steps and seeds only)
    saved = args.results_dir / "toy_methods.json"
    results = []
    if args.rows and saved.is_file():
        previous = json.loads(saved.read_text())
        if previous.get("steps") == args.steps and previous.get("seeds") == args.seeds:
            rerun = {(j["label"], j["seed"]) for j in todo}
            results = [r for r in previous["runs"] if (r["label"], r["seed"]) not in rerun]
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for r in pool.map(_toy_run, todo):
            print(f"  {r['label']} seed {r['seed']}: {r['student']} ({r['seconds']:.0f} s)", flush=True)
            results.append(r)
    saved.write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "runs": results}, indent=1))
    keys = ("sliced_w2", "log_likelihood", "smallest_mode_recall", "min_mode_recall")
    by_label = {label: [r for r in results if r["label"] == label] for label, _ in TOY_RUNS}
    by_label = {label: rs for label, rs in by_label.items() if rs}
    teacher = [r["teacher"] for r in results if r["teacher"] is not None]
    rows = [["teacher (Heun)", 35] + [_mean_spread([t[k] for t in teacher]) for k in keys] + ["–"]]
    for label, rs in by_label.items():
        rows.append([label, 1] + [_mean_spread([r["student"][k] for r in rs]) for k in keys]
                    + [f"{statistics.fmean(r['seconds'] for r in rs):.0f}"])
    _montage({label: rs[0]["plot"] for label, rs in by_label.items()}, args.results_dir / "toy_methods.png")
    return (f"ring8_imbalanced, {args.steps} steps per method (configs/distill_ring.yaml with each method's own defaults,"
            f" 2 fake-score updates per generator update for all), 2000 samples; mean ± std over {args.seeds} seeds "
            f"(run.seed 0..{args.seeds - 1}); {jobs} parallel runs × {threads} thread(s) each; {machine()}\n\n"
            + table(["model", "NFE", "sliced W₂ ↓", "log-lik ↑", "recall of 5% mode ↑", "min mode recall ↑",
                     "train s (mean)"], rows)
            + "\n\n![students, seed 0](eval/results/toy_methods.png)")


@benchmark("score_identity_step")
def bench_score_identity_step(args) -> str:
    """A generator step of SiD and Uni-Instruct (input gradients through teacher and fake) against a DMD step on the
    same tiny UNet, and SiD's fused closed-form backward against plain autograd."""
    from gendiv.distill import DMD, SiD, UniInstruct, score_difference_step
    from gendiv.distill import EncoderDiscriminator
    from gendiv.space import sample_sigma

    teacher, fake, gen, bs = _tiny_image_setup()
    fake.requires_grad_(False)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-6)
    z = torch.randn(bs, 3, 32, 32)
    disc = EncoderDiscriminator()

    def step(method, input_grad: bool, with_logits: bool):
        def run():
            sigma = sample_sigma("karras_index", bs, min_index=20, max_index=980)
            x = gen(z)
            ctx = score_difference_step(x, teacher, fake, sigma, discriminator=disc if with_logits else None,
                                        input_grad=input_grad)
            loss, _ = method.loss_from_context(ctx)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    cases = [("DMD (no input gradients)", DMD(kernel_backend="eager"), False, False),
             ("SiD α = 1.2, fused closed-form backward", SiD(fused_backward=True), True, False),
             ("SiD α = 1.2, plain autograd", SiD(fused_backward=False), True, False),
             ("Uni-Instruct (forward KL), fused", UniInstruct(divergence="forward_kl", ratio={"sigma_bins": 0}), True, True)]
    times = [timed(step(m, ig, lg), repeats=args.repeats, warmup=2) for _, m, ig, lg in cases]
    rows = [[name, t * 1e3, t / times[0]] for (name, *_), t in zip(cases, times)]
    return (f"Generator step (forward G, teacher + fake at x_σ, loss, backward, Adam) on a tiny UNet 32/64/64, batch {bs}, "
            f"3×32×32, {machine()}\n\n" + table(["step", "ms", "× DMD step"], rows))


@benchmark("toy_sampler")
def bench_toy_sampler(args) -> str:
    """The exact-score suite: each named distribution sampled by EDM Heun (18 steps, 35 NFE) with its exact
    denoiser, scored by the exact metrics against fresh exact samples (and exact-vs-exact as the floor); mean ± std
    over ``--seeds`` seeds."""
    from gendiv.condition import Condition
    from gendiv.sampling import sample
    from gendiv.toy import DISTRIBUTIONS, AnalyticDenoiser, exact_metrics, get_distribution, sliced_wasserstein2

    rows, n = [], 4000
    for name in DISTRIBUTIONS:
        dist = get_distribution(name)
        per_seed = []
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            labels = dist.sample_labels(n, g) if dist.num_classes else None
            cond = None if labels is None else Condition(class_labels=labels)
            t = time.time()
            x = sample(AnalyticDenoiser(dist), (n, dist.dim), num_steps=18, cond=cond, generator=g)
            elapsed = time.time() - t
            ref = dist.sample(n, g, class_labels=labels)
            floor = sliced_wasserstein2(dist.sample(n, g, class_labels=labels), ref)
            m = exact_metrics(dist, x, ref, cond=cond)
            exact_ll = float(dist.log_prob(ref, dist.metric_sigma, cond).mean())
            per_seed.append([m["sliced_w2"], floor, m["log_likelihood"], exact_ll, m["min_mode_recall"], elapsed])
        cols = list(zip(*per_seed))
        rows.append([name, dist.dim] + [_mean_spread(list(c)) for c in cols[:-1]] + [f"{statistics.fmean(cols[-1]):.2g}"])
    return (f"Exact-score suite, Heun 35 NFE with the analytic denoiser, {n} samples, mean ± std over {args.seeds} seeds, "
            f"{machine()}\n\n"
            + table(["distribution", "dim", "sliced W₂", "exact-vs-exact W₂", "log-lik", "log-lik of exact samples",
                     "min mode recall", "sampling s"], rows))


@benchmark("reflected")
def bench_reflected(args) -> str:
    """The exact 2-D box suite (checkerboard touching the walls, uniform box, mass in a corner): reflected SDE and
    ODE with the exact reflected score, and the thresholded (clipped) SDE with the exact score of the same data noised
    without walls (what an ordinary model learns), at 10/30/100/300 steps. Sliced W₂ and the largest per-coordinate
    two-sample KS statistic against fresh exact samples, exact log-likelihood (σ = 0.02), the fraction of samples
    outside the box and exactly on a wall; mean ± std over ``--seeds`` seeds."""
    from scipy.stats import ks_2samp

    from gendiv import ReflectedDiffusionPipeline, ReflectedODEScheduler, ReflectedSDEScheduler, ThresholdedSDEScheduler
    from gendiv.toy import REFLECTED_DISTRIBUTIONS, AnalyticDenoiser, get_distribution, mean_log_likelihood, sliced_wasserstein2

    n, rows = 2000, []
    samplers = {"reflected SDE": ReflectedSDEScheduler, "reflected ODE": ReflectedODEScheduler,
                "thresholded SDE": ThresholdedSDEScheduler}
    for name in REFLECTED_DISTRIBUTIONS:
        dist = get_distribution(name)
        for label, cls in samplers.items():
            teacher = AnalyticDenoiser(dist.unreflected() if cls is ThresholdedSDEScheduler else dist)
            pipe = ReflectedDiffusionPipeline(teacher, cls())
            pipe.set_progress_bar_config(disable=True)
            for steps in (10, 30, 100, 300):
                per_seed = []
                for seed in range(args.seeds):
                    g = torch.Generator().manual_seed(seed)
                    x = pipe(batch_size=n, num_inference_steps=steps, generator=g, output_type="pt").images.double()
                    ref = dist.sample(n, g).double()
                    ks = max(ks_2samp(x[:, d].numpy(), ref[:, d].numpy()).statistic for d in range(2))
                    outside = float(((x < 0) | (x > 1)).any(1).float().mean())
                    on_wall = float(((x == 0) | (x == 1)).any(1).float().mean())
                    per_seed.append([sliced_wasserstein2(x, ref), ks, mean_log_likelihood(dist, x.clamp(0, 1)),
                                     outside, on_wall])
                cols = list(zip(*per_seed))
                rows.append([name, label, steps] + [_mean_spread(list(c)) for c in cols])
    floor = []
    for name in REFLECTED_DISTRIBUTIONS:
        dist = get_distribution(name)
        g = torch.Generator().manual_seed(0)
        a, b = dist.sample(n, g), dist.sample(n, g)
        floor.append(f"{name} {sliced_wasserstein2(a, b):.3f} / "
                     f"{max(ks_2samp(a[:, d].numpy(), b[:, d].numpy()).statistic for d in range(2)):.3f} / "
                     f"{mean_log_likelihood(dist, a):.2f}")
    return (f"Exact 2-D box suite, {n} samples, mean ± std over {args.seeds} seeds, exact scores, {machine()}\n\n"
            + table(["data", "sampler", "steps", "sliced W₂", "KS (max over coords)", "log-lik (σ=0.02)",
                     "outside the box", "on a wall"], rows)
            + "\n\nExact-vs-exact floor (sliced W₂ / KS / log-lik of exact samples): " + "; ".join(floor))


@benchmark("reflected_fid")
def bench_reflected_fid(args) -> str:
    """A reflected model and an ordinary (EDM) model of the same size and training budget on scikit-learn's digits
    (16×16, class-conditional, configs/reflected_digits.yaml vs configs/teacher_digits.yaml, ``--image-steps``
    steps each), FID of 1,000 samples against the 1,797 real digits with gendiv's offline FID."""
    from gendiv.metrics.fid import compute_features
    from gendiv.metrics.images import dataset_images, pipeline_images
    out = ROOT / "runs" / "bench_reflected_fid"  # scratch runs of this benchmark, replaced on every run
    ref_feats = compute_features(dataset_images("digits"), progress=False)
    rows, grids = [], {}
    for label, config, sampling in (("EDM (unreflected), Euler 18 steps", "teacher_digits.yaml", "18 NFE"),
                                    ("reflected, SDE 100 steps", "reflected_digits.yaml", "100 NFE")):
        run = out / config.replace(".yaml", "")
        train_s = _train_run(config, run, [f"run.steps={args.image_steps}"])
        t = time.time()
        images = pipeline_images(run / "pipeline", 1000)
        sample_s = time.time() - t
        grids[label] = run / "samples_final.png"
        rows.append([label, *fid_and_kid(ref_feats, images), sampling, f"{train_s:.0f}", f"{sample_s:.0f}"])
    _montage(grids, args.results_dir / "reflected_fid.png")
    return (f"Digits 16×16, {args.image_steps} training steps each, same UNet (32/64), FID of 1,000 samples vs the "
            f"1,797 real digits (clean resize){fid_caveat(1000)}, {machine()}\n\n"
            + table(["model", "FID", "KID × 10³", "sampling", "train s", "sampling s (1,000)"], rows)
            + "\n\n![digit samples, ordinary vs reflected](eval/results/reflected_fid.png)")


def _train_run(config: str, run: Path, overrides: list[str], reuse: bool = False, extend: bool = False) -> float:
    """Train one config into a fresh scratch folder; returns the wall time (also kept in ``run/wall_s.json``).
    ``reuse``: a run that finished before (its ``wall_s.json`` exists) is kept, and its recorded time returned.
    ``extend``: that finished run is resumed instead (e.g. to a larger ``run.max_minutes``; the trainer's clock goes
    on from its checkpoint), and the time recorded is the sum of both invocations."""
    import shutil

    from gendiv.training import TrainConfig, load_config, train
    from gendiv.training.distill import DistillConfig, distill

    record = run / "wall_s.json"
    before = json.loads(record.read_text())["wall_s"] if record.exists() and (reuse or extend) else None
    if before is not None and not extend:
        return before
    if before is None:
        shutil.rmtree(run, ignore_errors=True)
    is_distill = config.startswith("distill_")
    cfg = load_config(DistillConfig if is_distill else TrainConfig, ROOT / "configs" / config,
                      [f"run.output_dir={run}", "run.progress=false"] + overrides
                      + (["run.resume=true"] if before is not None else []))
    t = time.time()
    (distill if is_distill else train)(cfg)
    elapsed = time.time() - t + (before or 0.0)
    record.write_text(json.dumps({"wall_s": elapsed, "config": config, "overrides": overrides,
                                  "threads": torch.get_num_threads()}))
    return elapsed


@benchmark("mnist")
def bench_mnist(args) -> str:
    """The headline on real digits (eval/mnist_study.py): the MNIST teacher (configs/teacher_mnist.yaml, kept as the
    artefact eval/artifacts/teacher_mnist/) against one-step students of every score-difference method at equal wall
    time, with learning curves (FID/KID against generator updates and minutes) and the teacher's FID at 35 NFE.
    ``--reuse`` keeps finished runs and evaluations under runs/bench_mnist/."""
    return eval_module("mnist_study").run(args, sys.modules[__name__])[0]


@benchmark("mnist_ablation")
def bench_mnist_ablation(args) -> str:
    """One knob of the MNIST recipe at a time, each trained for the same minutes (eval/mnist_study.py); shares its
    runs with ``mnist``."""
    return eval_module("mnist_study").run(args, sys.modules[__name__])[1]


@benchmark("mnist_is")
def bench_mnist_is(args) -> str:
    """IS and IS∞ of the MNIST teacher and students with a digit classifier (eval/mnist_study.py; the offline FID
    Inception weights hold no classifier); shares its runs with ``mnist``."""
    return eval_module("mnist_study").digit_is_table(args, sys.modules[__name__])


@benchmark("guidance")
def bench_guidance(args) -> str:
    """The exact class-conditional suite (conditional2d): a CFG model (EDM loss, 10% label dropout) and a GFT model of
    the same MLP and budget (``--steps``), sampled by Heun (18 steps) at several scales. Sliced W₂ to samples of the
    exact CFG target (the analytic mixture guided at the same s), the RMS gap of the denoiser to the exact CFG
    denoiser on noised data (σ ∈ {0.1, 0.3, 1}), wall time per sample batch and network passes per step. Also ICG and
    σ-interval guidance on the CFG model. Mean ± std over ``--seeds`` trainings."""
    from gendiv import GenDivPipeline
    from gendiv.condition import Condition, with_guidance_scale
    from gendiv.guidance import (ClassifierFreeGuidedDenoiser as ClassifierFreeGuidance,
                                 IndependentConditionGuidedDenoiser as IndependentConditionGuidance,
                                 SigmaIntervalGuidedDenoiser as IntervalGuidance)
    from gendiv.sampling import sample
    from gendiv.toy import AnalyticDenoiser, get_distribution, sliced_wasserstein2

    dist, n = get_distribution("conditional2d"), 4000
    exact = AnalyticDenoiser(dist)
    out = ROOT / "runs" / "bench_guidance"
    results: dict = {}
    for seed in range(args.seeds):
        dens = {}
        for name, objective in (("cfg", "edm"), ("gft", "gft")):
            _train_run("gft_conditional2d.yaml", out / f"{name}{seed}",
                       [f"objective={objective}", f"run.steps={args.steps}", f"run.seed={seed}"])
            dens[name] = GenDivPipeline.from_pretrained(str(out / f"{name}{seed}" / "pipeline")).denoiser
        g = torch.Generator().manual_seed(100 + seed)
        labels = dist.sample_labels(n, g)
        cond = Condition(class_labels=labels)
        probe = dist.sample(n, g, class_labels=labels)
        for s in (1.5, 2.0, 3.0):
            variants = {
                "CFG (2 passes/step)": (ClassifierFreeGuidance(dens["cfg"], s), cond, 2),
                "GFT (1 pass/step)": (dens["gft"], with_guidance_scale(cond, s, n, "cpu"), 1),
                "ICG on the CFG model": (IndependentConditionGuidance(dens["cfg"], s, seed=seed), cond, 2),
                "CFG on σ ∈ (0.3, 2] only": (IntervalGuidance(ClassifierFreeGuidance(dens["cfg"], s), 0.3, 2.0), cond, 2),
            }
            target_den = ClassifierFreeGuidance(exact, s)
            target = sample(target_den, (n, 2), num_steps=18, cond=cond, generator=torch.Generator().manual_seed(seed))
            for label, (den, c, passes) in variants.items():
                t = time.time()
                with torch.no_grad():
                    x = sample(den, (n, 2), num_steps=18, cond=c, generator=torch.Generator().manual_seed(seed))
                elapsed = time.time() - t
                gaps = []
                for sigma in (0.1, 0.3, 1.0):
                    noisy = probe + sigma * torch.randn(probe.shape, generator=torch.Generator().manual_seed(7))
                    sig = torch.full((n,), sigma)
                    with torch.no_grad():
                        gaps.append(float((den(noisy, sig, c).double() - target_den(noisy.double(), sig.double(), cond)
                                           ).norm(dim=1).pow(2).mean().sqrt()))
                row = results.setdefault((s, label), {"w2": [], "gap": [], "time": [], "passes": passes})
                row["w2"].append(sliced_wasserstein2(x, target))
                row["gap"].append(statistics.fmean(gaps))
                row["time"].append(elapsed)
    rows = []
    for (s, label), r in results.items():
        cfg_time = statistics.fmean(results[(s, "CFG (2 passes/step)")]["time"])
        rows.append([f"{s:g}", label, r["passes"], _mean_spread(r["w2"]), _mean_spread(r["gap"]),
                     f"{statistics.fmean(r['time']):.2f}", f"{cfg_time / statistics.fmean(r['time']):.2f}×"])
    return (f"conditional2d, MLP 128×3, {args.steps} training steps per model, Heun 18 steps, {n} samples, mean ± std "
            f"over {args.seeds} seeds, {machine()}\n\n"
            + table(["s", "sampler", "passes/step", "sliced W₂ to exact CFG samples", "RMS gap to exact CFG denoiser",
                     "sampling s", "speed vs CFG"], rows))


@benchmark("guidance_fid")
def bench_guidance_fid(args) -> str:
    """Digits 16×16: a CFG teacher (configs/teacher_digits.yaml) and a GFT model (configs/gft_digits.yaml) of the same
    UNet widths and budget (``--image-steps``), FID of 1,000 samples at s = 2 against the real digits: GFT at 18
    Euler steps (1 pass each) vs CFG at 9 steps (2 passes each, the same number of network passes) and at 18 steps."""
    from gendiv import GenDivPipeline
    from gendiv.metrics.fid import compute_features
    from gendiv.metrics.images import dataset_images, to_rgb_uint8

    out = ROOT / "runs" / "bench_guidance_fid"
    ref_feats = compute_features(dataset_images("digits"), progress=False)
    train_s = {name: _train_run(config, out / name, [f"run.steps={args.image_steps}"])
               for name, config in (("cfg", "teacher_digits.yaml"), ("gft", "gft_digits.yaml"))}
    rows = []
    for label, name, steps in (("GFT, 1 pass/step", "gft", 18), ("CFG, 2 passes/step", "cfg", 9),
                               ("CFG, 2 passes/step", "cfg", 18)):
        pipe = GenDivPipeline.from_pretrained(str(out / name / "pipeline"))
        pipe.set_progress_bar_config(disable=True)
        g, images, t = torch.Generator().manual_seed(0), [], time.time()
        for _ in range(0, 1000, 100):
            arr = pipe(batch_size=100, guidance_scale=2.0, num_inference_steps=steps, generator=g, output_type="np").images
            images += [to_rgb_uint8((a * 255).round().astype("uint8")) for a in arr]
        elapsed = time.time() - t
        passes = steps * (1 if name == "gft" else 2)
        rows.append([label, steps, passes, *fid_and_kid(ref_feats, images), f"{elapsed:.1f}", f"{train_s[name]:.0f}"])
    return (f"Digits 16×16, guidance scale 2, {args.image_steps} training steps per model, FID of 1,000 samples vs the "
            f"1,797 real digits{fid_caveat(1000)}, {machine()}\n\n"
            + table(["model", "Euler steps", "network passes", "FID", "KID × 10³", "sampling s", "train s"], rows))


@benchmark("frechet")
def bench_frechet(args) -> str:
    """Fréchet distance at d = 2048: gendiv's symmetric eigen form (with and without the cached reference square
    root) against scipy.linalg.sqrtm of the product, on the same random covariances."""
    import numpy as np
    import scipy.linalg

    from gendiv.metrics import FeatureStats, frechet_distance

    rng = np.random.default_rng(0)
    d = 2048
    a = FeatureStats.from_features(rng.normal(size=(4096, d)))
    b = FeatureStats.from_features(rng.normal(size=(4096, d)) * 1.1 + 0.05)

    def scipy_fd():
        covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma)
        covmean = covmean.real if np.iscomplexobj(covmean) else covmean
        return float(((a.mu - b.mu) ** 2).sum() + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))

    def eig_cold():
        a._sqrt = None
        return frechet_distance(a, b)

    reps = max(2, args.repeats // 5)
    t_scipy, t_cold, t_warm = timed(scipy_fd, reps, 1), timed(eig_cold, reps, 1), timed(lambda: frechet_distance(a, b), reps, 1)
    diff = abs(scipy_fd() - frechet_distance(a, b))
    rows = [["scipy.linalg.sqrtm(Σ₁Σ₂)", t_scipy, 1.0], ["gendiv eigh form", t_cold, t_scipy / t_cold],
            ["gendiv, cached reference √Σ", t_warm, t_scipy / t_warm]]
    return (f"Fréchet distance, d = 2048, {machine()}\n\n"
            + table(["method", "s/call", "speed-up vs sqrtm"], rows) + f"\n\n|Δ FID| between the two forms: {diff:.2e}")


UNBIASED_FID_SAMPLES = 5000


def fid_and_kid(ref_feats, images) -> tuple[str, str]:
    """FID and KID × 10³ (mean ± std over subsets) of generated images against reference features, as table cells;
    an FID of fewer than 5,000 samples is marked biased (it is biased high, more so the fewer the samples)."""
    from gendiv.metrics import FeatureStats, compute_features, frechet_distance, kid

    feats = compute_features(images, progress=False)
    fid = frechet_distance(FeatureStats.from_features(ref_feats), FeatureStats.from_features(feats))
    kid_mean, kid_std = kid(ref_feats, feats)
    biased = " (biased)" if len(feats) < UNBIASED_FID_SAMPLES else ""
    return f"{fid:.1f}{biased}", f"{1e3 * kid_mean:.2f} ± {1e3 * kid_std:.2f}"


def fid_caveat(n: int) -> str:
    return (f"; FID of {n:,} < {UNBIASED_FID_SAMPLES:,} samples is biased high (compare within the table), KID beside it"
            if n < UNBIASED_FID_SAMPLES else "")


def _montage(panels: dict, path: Path, side_by_side: bool = False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    k = len(panels)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 4.4)) if side_by_side else plt.subplots(k, 1, figsize=(9, 3 * k))
    for ax, (tag, p) in zip(axes, panels.items()):
        ax.imshow(mpimg.imread(p))
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@benchmark("memory")
def bench_memory(args) -> str:
    """Peak memory per distillation step: full copies vs LoRA vs LoRA + checkpointing (eval/memory.py)."""
    spec = importlib.util.spec_from_file_location("gendiv_eval_memory", ROOT / "eval" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(args)


def eval_module(name: str):
    """eval/<name>.py, a benchmark in its own module (eval/ is not a package); its ``run(args, bench)`` gets this
    module for the shared table helpers."""
    spec = importlib.util.spec_from_file_location(f"gendiv_eval_{name}", ROOT / "eval" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@benchmark("guidance_gradient")
def bench_guidance_gradient(args) -> str:
    """Classifier and training-free guidance (DPS, FreeDoM, MPGD, TFG) on the exact suite and digits."""
    return eval_module("guidance_gradient").run(args, sys.modules[__name__])


@benchmark("consistency")
def bench_consistency(args) -> str:
    """CD, iCT, sCM, MeanFlow and few-step DMD2 on the exact suite at 1, 2 and 4 passes (eval/consistency.py)."""
    return eval_module("consistency").run(args, sys.modules[__name__])


@benchmark("device")
def bench_device(args) -> str | None:
    """The GPU device check (eval/device.py, eval/device_check.sh); measures nothing without a CUDA device."""
    return eval_module("device").run(args, sys.modules[__name__])


@benchmark("teacher_objectives")
def bench_teacher_objectives(args) -> str:
    """Pseudo-Huber, input perturbation, mirror flow matching and the reflected likelihood on the exact suite
    (eval/teacher_objectives.py)."""
    return eval_module("teacher_objectives").run(args, sys.modules[__name__])


@benchmark("noise_schedule")
def bench_noise_schedule(args) -> str:
    """Laplace log-SNR σ sampling against the lognormal on digits (eval/noise_schedule.py)."""
    return eval_module("noise_schedule").run(args, sys.modules[__name__])


@benchmark("qmc_fid")
def bench_qmc_fid(args) -> str:
    """Seed-to-seed spread of FID/KID with i.i.d. vs scrambled-Sobol latents (eval/qmc_fid.py)."""
    return eval_module("qmc_fid").run(args, sys.modules[__name__])


@benchmark("guidance_cfg_aware")
def bench_guidance_cfg_aware(args) -> str:
    """CFG-aware training vs plain label dropout on the exact suite across CFG scales."""
    return eval_module("guidance_cfg_aware").run(args, sys.modules[__name__])


@benchmark("guidance_adapter")
def bench_guidance_adapter(args) -> str:
    """One-pass guidance adapter vs the teacher's two-pass CFG on the exact suite (eval/guidance_adapter.py)."""
    return eval_module("guidance_adapter").run(args, sys.modules[__name__])


@benchmark("gft_text")
def bench_gft_text(args) -> str:
    """GFT of a tiny text teacher, one pass per step, against exact CFG samples on the two-prompt suite
    (eval/gft_text.py)."""
    return eval_module("gft_text").run(args, sys.modules[__name__])


# ------------------------------------------------------------------------------------------------------------
def update_readme(name: str, markdown: str, readme: Path = ROOT / "README.md"):
    text = readme.read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if start not in text:
        print(f"README has no {start} section; not updated", file=sys.stderr)
        return
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    readme.write_text(pattern.sub(lambda _: f"{start}\n{markdown}\n{end}", text))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {sorted(BENCHMARKS)})")
    p.add_argument("--update-readme", action="store_true", help="rewrite the README's <!-- bench:NAME --> sections")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--steps", type=int, default=3000, help="training steps per method (toy_methods)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (toy_methods): tables show mean ± std")
    p.add_argument("--jobs", type=int, default=2, help="parallel runs (toy_methods); threads are split between them")
    p.add_argument("--rows", default="", help="toy_methods: rerun only rows whose label contains one of these "
                   "comma-separated strings, keeping the others from the last run")
    p.add_argument("--image-steps", type=int, default=4000, help="training steps per image model (reflected_fid)")
    p.add_argument("--guidance-steps", type=int, default=1500, help="training steps per model (guidance_gradient's "
                   "digits denoiser, guidance_cfg_aware)")
    p.add_argument("--consistency-steps", type=int, default=500, help="training steps per model (consistency)")
    p.add_argument("--objective-steps", type=int, default=1000, help="training steps per model (teacher_objectives)")
    p.add_argument("--schedule-steps", type=int, default=600, help="training steps per digits model (noise_schedule)")
    p.add_argument("--fid-samples", type=int, default=5000, help="generated samples per model for the headline FID (mnist)")
    p.add_argument("--qmc-samples", type=int, default=256, help="samples per set (qmc_fid; a power of 2 suits Sobol)")
    p.add_argument("--reuse", action="store_true", help="mnist: keep runs that finished before (runs/bench_mnist/)")
    p.add_argument("--mnist-minutes", type=float, default=120, help="mnist: training minutes of the kept recipe")
    p.add_argument("--mnist-paper-minutes", type=float, default=0,
                   help="mnist: training minutes of DMD2 as published (TTUR 5) beside the kept recipe; 0: not run")
    p.add_argument("--mnist-sweep-minutes", type=float, default=5, help="mnist: training minutes of every other method")
    p.add_argument("--mnist-ablation-minutes", type=float, default=5, help="mnist_ablation: minutes of each variant")
    p.add_argument("--curve-samples", type=int, default=500, help="mnist: samples per learning-curve point")
    p.add_argument("--mnist-rows", default="", help="mnist: train only the runs whose label contains one of these "
                   "'|'-separated strings (e.g. 'SiD|ablation: bf16'), evaluate nothing and leave the tables as they are")
    p.add_argument("--is-samples", type=int, default=1000, help="mnist_is: samples per model for IS and IS∞")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where the Markdown tables go")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the README to update")
    args = p.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"== {name} ==", flush=True)
        md = BENCHMARKS[name](args)
        if md is None:  # nothing measured (e.g. the device check without a device): results and README kept
            continue
        print(md, flush=True)
        (args.results_dir / f"{name}.md").write_text(md + "\n")
        if args.update_readme:
            update_readme(name, md, args.readme)


if __name__ == "__main__":
    main()
