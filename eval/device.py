"""The device check (issue 26): every CUDA-specific path of gendiv measured in one unattended run of a few minutes.

    bash eval/device_check.sh                  # installs what it needs, CUDA-only tests, then the line below
    python eval/bench.py device --update-readme

On one GPU it measures (1) the Triton and compiled weighting kernels against eager (µs per call, GB/s, fraction of
the device's memory bandwidth: a device-to-device copy measured in the same run, and the datasheet figure from the
memory clock and bus width where PyTorch reports them); (2) the DMD distillation step, gendiv's default
configuration against the plain fp32 DMD2-style loop (same network, same batch, one process, alternating rounds);
(3) peak memory per step: full copies of the network for teacher, fake score and generator, against LoRA adapters
on one frozen base (gendiv.models.lora), with and without gradient checkpointing; (4) 200 steps of a CIFAR-shaped
GPU training config (configs/teacher_cifar10_gpu.yaml) on random images: throughput, peak memory, finite losses.
Without a CUDA device it measures nothing, says so, and leaves the results and the README as they are.

Every function takes ``device`` and sizes, so that tests/test_device_check.py runs the same code on the CPU at toy
sizes (what CI can check without a GPU).
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

SKIP_MESSAGE = "no CUDA device: the device check measured nothing (run it on a machine with a GPU)"


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_rounds(fns: dict, device: str, repeats: int, warmup: int = 2) -> dict:
    """Median seconds per call of each function, in interleaved rounds (A B A B ...), device-synchronised."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            samples[key].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


# -- (1) kernels ------------------------------------------------------------------------------------------------
def bandwidth(device: str) -> tuple[float, float | None]:
    """(measured GB/s of a device-to-device copy of 512 MiB (16 MiB on the CPU): bytes read + written, datasheet GB/s
    or None)."""
    n = (512 if device.startswith("cuda") else 16) * 2 ** 20 // 4
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    t = timed_rounds({"copy": lambda: dst.copy_(src)}, device, repeats=10)["copy"]
    measured = 2 * n * 4 / t / 1e9
    datasheet = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
        if clock_khz and bus_bits:
            datasheet = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate
    return measured, datasheet


def kernel_rows(device: str, shapes, repeats: int, backends=None) -> tuple[list[list], float, float | None]:
    """The score-difference kernel and f-distill's whole weighting, per backend (default: eager, compiled, and
    Triton on CUDA), at each shape."""
    from gendiv.distill import FDistill, StepContext
    from gendiv.kernels import triton_available, weighted_difference

    copy_gbs, datasheet_gbs = bandwidth(device)
    if backends is None:
        backends = ["eager", "compile"] + (["triton"] if device.startswith("cuda") and triton_available() else [])
    rows = []
    for shape in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        x, dt, df = (torch.randn(*shape, device=device, generator=g) for _ in range(3))
        w = torch.rand(shape[0], device=device, generator=g)
        moved = 4 * x.numel() * 4  # read x, Dᵀ, Dᶠ, write the result (fp32): the least any kernel moves
        ctx = StepContext(x=x, sigma=torch.rand(shape[0], device=device) * 3, x_sigma=x, cond=None, d_teacher=dt,
                          d_fake=df, logits=2 * torch.randn(shape[0], device=device))
        methods = {b: FDistill("jensen_shannon", kernel_backend=b) for b in backends}
        fns = {("difference", b): (lambda b=b: weighted_difference(x, dt, df, w, backend=b)) for b in backends}
        fns |= {("f-distill weighting", b): (lambda m=m: m.pseudo_gradient(ctx)) for b, m in methods.items()}
        t = timed_rounds(fns, device, repeats)
        for (what, b), seconds in t.items():
            gbs = moved / seconds / 1e9
            rows.append(["×".join(map(str, shape)), what, b, seconds * 1e6, t[(what, "eager")] / seconds, gbs,
                         gbs / copy_gbs, "–" if datasheet_gbs is None else f"{gbs / datasheet_gbs:.3f}"])
    return rows, copy_gbs, datasheet_gbs


# -- (2) and (3) the distillation step and its memory ---------------------------------------------------------------
def unet(size: int, channels: int, widths, attention: bool):
    from diffusers import UNet2DModel

    down = ("AttnDownBlock2D" if attention else "DownBlock2D",) * len(widths)
    up = ("AttnUpBlock2D" if attention else "UpBlock2D",) * len(widths)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=tuple(widths),
                       layers_per_block=1, norm_num_groups=8, down_block_types=down, up_block_types=up)


def image_networks(device: str, size: int, channels: int, widths, attention: bool):
    """(teacher, fake score, generator): three full copies of a UNet2DModel denoiser, as the step table's."""
    from gendiv.models import OneStepGenerator, UNetDenoiser

    torch.manual_seed(0)
    teacher = UNetDenoiser.from_unet(unet(size, channels, widths, attention)).to(device).eval().requires_grad_(False)
    fake = copy.deepcopy(teacher).requires_grad_(True).train()
    return teacher, fake, OneStepGenerator.from_denoiser(teacher, 80.0).requires_grad_(True).train()


def sd_shaped_teacher(folder: Path, widths, latent_size: int):
    """A StableDiffusionPipeline-shaped teacher folder: SD 1.5's cross-attention UNet2DConditionModel layout at the
    given widths on gendiv.testing's tiny VAE and CLIP text encoder (the UNet is what takes the memory)."""
    from diffusers import UNet2DConditionModel

    from gendiv import testing

    pipe = testing.tiny_text_to_image_pipeline()
    n = len(widths)
    torch.manual_seed(0)
    pipe.register_modules(unet=UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=tuple(widths), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=pipe.text_encoder.config.hidden_size, norm_num_groups=8, attention_head_dim=8))
    pipe.save_pretrained(folder)


def text_networks(device: str, folder: Path, kind: str, batch: int):
    """(teacher, fake score, generator) of the SD-shaped teacher: three full copies (``full``) or LoRA adapters on
    one frozen base (``lora``, ``lora+checkpointing``), and the prompt condition."""
    from gendiv.condition import Condition
    from gendiv.models import OneStepGenerator
    from gendiv.models.lora import SharedLora
    from gendiv.models.teachers import load_teacher

    den, _, text = load_teacher(str(folder))
    cond = Condition(text_embeds=text.encode(["a lighthouse at sunset"] * batch).float().to(device))
    den = den.to(device).eval().requires_grad_(False)
    if kind == "full":
        fake = copy.deepcopy(den).requires_grad_(True).train()
        return (den, fake, OneStepGenerator.from_denoiser(den, 80.0).to(device).requires_grad_(True).train()), cond
    shared = SharedLora(den, gradient_checkpointing=kind.endswith("checkpointing"))
    gen = shared.student(80.0)
    return (shared.view(None), shared.score_network(), gen), cond


def dmd_step(nets, optimizers, z, device: str, precision: str, reuse: bool, cond=None):
    """gendiv's DMD step as the trainer runs it (score_difference_step, the method's loss, denoising_loss)."""
    from gendiv.distill import DMD, score_difference_step
    from gendiv.objectives import denoising_loss
    from gendiv.space import sample_sigma

    teacher, fake, gen = nets
    opt_g, opt_f = optimizers
    bs = z.shape[0]
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
    fake.requires_grad_(False)
    with autocast:
        x = gen(z, cond).float()
        loss, _ = DMD(kernel_backend="auto").loss_from_context(
            score_difference_step(x, teacher, fake, sample_sigma("karras_index", bs, device=device, min_index=20,
                                                                 max_index=980), cond=cond))
    loss.backward()
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    fake.requires_grad_(True)
    if reuse:
        xf = x.detach()
    else:
        with torch.no_grad(), autocast:
            xf = gen(z, cond).float()
    with autocast:
        loss_f = denoising_loss(fake, xf, cond, sigma=sample_sigma("karras_index", bs, device=device))
    loss_f.backward()
    opt_f.step()
    opt_f.zero_grad(set_to_none=True)
    return float(loss.detach()), float(loss_f.detach())


def plain_dmd2_step(nets, optimizers, z, device: str, precision: str = "no"):
    """The DMD2 code path written out (fp32 unless ``precision`` is bf16): noise, two no-grad predictions,
    normalised gradient, surrogate MSE; then the fake score's EDM-weighted denoising loss."""
    from gendiv.space import edm_loss_weight, sample_sigma

    teacher, fake, gen = nets
    opt_g, opt_f = optimizers
    bs = z.shape[0]
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
    sigma = sample_sigma("karras_index", bs, device=device, min_index=20, max_index=980).view(-1, 1, 1, 1)
    fake.requires_grad_(False)
    with autocast:
        x = gen(z).float()
        noisy = x + sigma * torch.randn_like(x)
        with torch.no_grad():
            p_real = x - teacher(noisy, sigma.flatten()).float()
            p_fake = x - fake(noisy, sigma.flatten()).float()
            grad = torch.nan_to_num((p_real - p_fake) / p_real.abs().mean(dim=[1, 2, 3], keepdim=True))
        loss = 0.5 * torch.nn.functional.mse_loss(x, (x - grad).detach())
    loss.backward()
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    fake.requires_grad_(True)
    with torch.no_grad(), autocast:
        xf = gen(z).float()
    s2 = sample_sigma("karras_index", bs, device=device).view(-1, 1, 1, 1)
    with autocast:
        pred = fake(xf + s2 * torch.randn_like(xf), s2.flatten()).float()
        loss_f = (edm_loss_weight(s2) * (pred - xf) ** 2).mean()
    loss_f.backward()
    opt_f.step()
    opt_f.zero_grad(set_to_none=True)
    return float(loss.detach()), float(loss_f.detach())


def _optimizers(nets, gendiv_defaults: bool):
    from gendiv.training.performance import adamw

    fused = "auto" if gendiv_defaults else False
    return tuple(adamw([p for p in net.parameters() if p.requires_grad], 1e-6, (0.9, 0.99), 0.0, fused)
                 for net in (nets[2], nets[1]))


def _setup(device: str, shape, widths, attention: bool, gendiv_defaults: bool):
    from gendiv.training.performance import apply_memory_format

    nets = image_networks(device, shape[-1], shape[1], widths, attention)
    if gendiv_defaults:
        for net in nets:
            apply_memory_format(net, "auto")
    return nets, _optimizers(nets, gendiv_defaults), torch.randn(*shape, device=device)


def step_rows(device: str, shape, widths, attention: bool, repeats: int) -> list[list]:
    """gendiv default (precision auto, channels-last, fused AdamW, reused samples) vs the plain fp32 loop."""
    from gendiv.training.performance import resolve_mixed_precision

    precision = resolve_mixed_precision("auto", image_data=True)
    default = _setup(device, shape, widths, attention, True)
    plain = _setup(device, shape, widths, attention, False)
    t = timed_rounds({"plain": lambda: plain_dmd2_step(*plain, device),
                      "default": lambda: dmd_step(*default, device, precision, True)}, device, repeats)
    label = f"gendiv default ({'bf16' if precision == 'bf16' else 'fp32'}, channels-last, fused AdamW, reused samples)"
    return [["plain DMD2-style loop, fp32", t["plain"] * 1e3, 1.0],
            [label, t["default"] * 1e3, t["plain"] / t["default"]]]


def peak_memory_rows(device: str, widths, latent_size: int, batch: int) -> list[list]:
    """Peak allocated memory of one DMD step (fp32, after a warm-up step) of an SD-shaped teacher, per way of
    holding the networks: full copies vs LoRA adapters (rank 8 on the attention projections) on one frozen base,
    with and without gradient checkpointing."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sd_shaped_teacher(Path(tmp), widths, latent_size)
        for kind in ("full", "lora", "lora+checkpointing"):
            nets, cond = text_networks(device, Path(tmp), kind, batch)
            z = torch.randn(batch, 4, latent_size, latent_size, device=device)
            setup = (nets, _optimizers(nets, True), z)
            trained = sum(p.numel() for net in (nets[1], nets[2]) for p in net.parameters() if p.requires_grad)
            dmd_step(*setup, device, "no", True, cond)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            losses = dmd_step(*setup, device, "no", True, cond)
            peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else float("nan")
            rows.append([kind, trained / 1e6, peak, "finite" if all(map(math.isfinite, losses)) else "NOT FINITE"])
            del setup, nets
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


# -- (4) a CIFAR-shaped GPU config -------------------------------------------------------------------------------
def config_run(device: str, steps: int, overrides: list[str], config: str = "teacher_cifar10_gpu.yaml") -> list[list]:
    """``steps`` training steps of a GPU config on random 32×32 RGB images; steps/s after the first log, peak
    memory, whether every logged loss is finite."""
    import numpy as np

    from gendiv.training import TrainConfig, load_config, train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "random_images.npz"
        np.savez(data, images=np.random.default_rng(0).integers(0, 256, (1024, 32, 32, 3), dtype=np.uint8))
        out = Path(tmp) / "run"
        cfg = load_config(TrainConfig, ROOT / "configs" / config,
                          [f"data.source=npz:{data}", f"run.output_dir={out}", f"run.steps={steps}", "run.progress=false",
                           "run.log_every=10", f"run.checkpoint_every={steps}", "run.sample_every=0"] + overrides)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - t
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [r for r in rows if "time_s" in r]
    rate = (logged[-1]["step"] - logged[0]["step"]) / (logged[-1]["time_s"] - logged[0]["time_s"]) if len(logged) > 1 \
        else steps / wall
    losses = [v for r in rows for k, v in r.items() if "loss" in k and isinstance(v, float)]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else float("nan")
    finite = bool(losses) and all(math.isfinite(v) for v in losses)
    return [[config, cfg.run.batch_size, steps, rate, rate * cfg.run.batch_size, peak, wall,
             "all finite" if finite else "NOT FINITE"]]


# -- the whole check -------------------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, torch {torch.__version__}"
    return f"CPU dry run, torch {torch.__version__}"


def report(table, device: str, kernel_shapes, step_shape, widths, attention: bool, repeats: int, config_steps: int,
           config_overrides: list[str], sd_widths, latent_size: int, sd_batch: int, kernel_backends=None) -> str:
    """The check's Markdown; ``table`` is eval/bench.py's table formatter."""
    rows, copy_gbs, datasheet = kernel_rows(device, kernel_shapes, repeats, kernel_backends)
    steps = step_rows(device, step_shape, widths, attention, repeats)
    memory = peak_memory_rows(device, sd_widths, latent_size, sd_batch)
    run = config_run(device, config_steps, config_overrides)
    net = f"UNet {'/'.join(map(str, widths))}{' with attention' if attention else ''}, batch {step_shape[0]}, " \
          f"{'×'.join(map(str, step_shape[1:]))}"
    datasheet_text = f"{datasheet:.0f} GB/s from the memory clock and bus width" if datasheet else "no datasheet figure"
    return (f"Device check on {device_name(device)}; medians of {repeats} interleaved rounds\n\n"
            f"Kernels (device-to-device copy: {copy_gbs:.0f} GB/s measured; {datasheet_text}):\n\n"
            + table(["shape", "what", "backend", "µs/call", "speed-up vs eager", "GB/s", "of copy bandwidth",
                     "of datasheet bandwidth"], rows)
            + f"\n\nDMD step, {net}, same networks and batch, one process:\n\n"
            + table(["step", "ms/step", "speed-up vs plain fp32"], steps)
            + f"\n\nPeak memory of one DMD step (fp32), SD-1.5-shaped UNet {'/'.join(map(str, sd_widths))} on "
              f"4×{latent_size}×{latent_size} latents, batch {sd_batch}:\n\n"
            + table(["networks", "trained M parameters", "peak MiB", "losses"], memory)
            + "\n\nA CIFAR-shaped GPU config on random images:\n\n"
            + table(["config", "batch", "steps", "steps/s", "images/s", "peak GiB", "wall s", "losses"], run))


def run(args, bench) -> str | None:
    """``eval/bench.py device``: the full check on the first CUDA device, or None (nothing measured) without one."""
    if not torch.cuda.is_available():
        print(SKIP_MESSAGE, flush=True)
        return None
    return report(bench.table, "cuda", kernel_shapes=[(64, 3, 32, 32), (64, 4, 128, 128)], step_shape=(64, 3, 32, 32),
                  widths=(128, 256, 256), attention=True, repeats=max(5, args.repeats), config_steps=200,
                  config_overrides=[], sd_widths=(320, 640, 1280, 1280), latent_size=64, sd_batch=4)
