"""Peak memory of a DMD2-style distillation step (issue 22), for ``eval/bench.py memory``.

Three ways to hold teacher, student and fake score of one SD-shaped teacher (a UNet2DConditionModel with SD 1.5's
block structure at reduced width, prompt embeddings as its condition):

- ``full``: three full networks (frozen teacher, trainable student and fake-score copies);
- ``lora``: one frozen base with the student and the fake score as LoRA adapters (``gendiv.models.lora``);
- ``lora+ckpt``: the same with gradient checkpointing in the base network.

Each variant runs in its own process (peak resident memory is a per-process high-water mark): the step is the
generator update (student forward, teacher and fake-score passes without gradient, surrogate loss backward, AdamW)
then the fake-score update (denoising loss, AdamW), repeated a few times; the table gives the peak over the run
minus the process's resident memory before the networks were built (on CUDA: ``max_memory_allocated``), mean ± std
over seeds. The SDXL rows count parameters exactly (SDXL's UNet config built on the meta device, LoRA added there)
and give the weight, gradient and AdamW-state bytes each variant holds in fp32, which is what the three layouts
change; activations depend on resolution and batch and are not extrapolated.

    python eval/memory.py worker full 0      # one measurement (what bench.py starts), prints JSON
"""
from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "lora", "lora+ckpt")
LORA_RANK = 64  # DMD2's SDXL LoRA rank
STEPS, BATCH, TOKENS = 3, 4, 16
SIGMA_INIT = 14.6  # SD's σ_max in EDM terms

SMALL_SD_UNET = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=128,
                     block_out_channels=(32, 64, 128, 128), attention_head_dim=8, norm_num_groups=32,
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _networks(variant: str, seed: int):
    """(student generator, fake score, teacher) for one layout."""
    import copy

    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from gendiv.models import OneStepGenerator, UNetDenoiser
    from gendiv.models.lora import LoraOneStepGenerator, LoraSpec, SharedLora

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SMALL_SD_UNET)
    teacher = UNetDenoiser.from_unet(unet, scheduler=DDIMScheduler(clip_sample=False),
                                     text_embeds_shape=[TOKENS, SMALL_SD_UNET["cross_attention_dim"]])
    del unet
    if variant == "full":
        student = OneStepGenerator.from_denoiser(teacher, SIGMA_INIT).requires_grad_(True)
        fake = copy.deepcopy(teacher).requires_grad_(True)
        return student, fake, teacher.requires_grad_(False)
    shared = SharedLora(teacher, LoraSpec(rank=LORA_RANK), gradient_checkpointing=variant == "lora+ckpt")
    return LoraOneStepGenerator(shared.view("student"), SIGMA_INIT), shared.view("fake"), shared.view(None)


def worker(variant: str, seed: int) -> dict:
    """Run the steps of one layout and return its peak memory."""
    import torch

    from gendiv.condition import Condition

    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    before = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    student, fake, teacher = _networks(variant, seed)
    for net in (student, fake, teacher):
        net.to(device)
    opt_g = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    opt_f = torch.optim.AdamW([p for p in fake.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(seed)
    for _ in range(STEPS):
        cond = Condition(text_embeds=torch.randn(BATCH, TOKENS, SMALL_SD_UNET["cross_attention_dim"], generator=g)
                         .to(device))
        z = torch.randn(BATCH, 4, 16, 16, generator=g).to(device)
        sigma = torch.full((BATCH,), 2.0, device=device)
        noise = torch.randn(z.shape, generator=g).to(device)
        x = student(z, cond)
        with torch.no_grad():
            direction = fake(x + sigma.view(-1, 1, 1, 1) * noise, sigma, cond) \
                - teacher(x + sigma.view(-1, 1, 1, 1) * noise, sigma, cond)  # DMD: ∝ s_real − s_fake
        (0.5 * (x - (x - direction).detach()).square().sum()).backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        x = x.detach()
        loss = (fake(x + sigma.view(-1, 1, 1, 1) * noise, sigma, cond) - x).square().mean()
        loss.backward()
        opt_f.step()
        opt_f.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_bytes()
    trainable = sum(p.numel() for net in (student, fake) for p in net.parameters() if p.requires_grad)
    return {"variant": variant, "seed": seed, "peak_bytes": peak - before, "trainable": trainable}


def sdxl_counts() -> dict:
    """SDXL UNet parameters and LoRA (rank 64, attention projections) adapter parameters, counted on the meta
    device (nothing allocated)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from gendiv.models.lora import LoraSpec

    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET)
        base = sum(p.numel() for p in unet.parameters())
        unet.add_adapter(LoraSpec(rank=LORA_RANK).peft_config(), adapter_name="student")
    adapter = sum(p.numel() for name, p in unet.named_parameters() if ".student." in name)
    return {"base": base, "adapter": adapter}


def state_bytes(variant: str, base: int, adapter: int) -> int:
    """fp32 bytes of weights, gradients and AdamW's two moments: a frozen network holds 4 B per parameter, a
    trained one 16 B (weight, gradient, m, v)."""
    if variant == "full":
        return 4 * base + 2 * 16 * base
    return 4 * base + 2 * 16 * adapter


def _machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return cpu


def run(args) -> str:
    """The table for ``eval/bench.py memory``: each variant × ``args.seeds`` seeds, one process each."""
    import torch

    seeds = max(3, getattr(args, "seeds", 3))
    results = {v: [] for v in VARIANTS}
    for seed in range(seeds):
        for variant in VARIANTS:  # interleaved, so drift in the machine hits every variant alike
            out = subprocess.run([sys.executable, __file__, "worker", variant, str(seed)], capture_output=True,
                                 text=True, check=True, cwd=ROOT)
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    counts = sdxl_counts()
    mib = lambda b: b / 2**20  # noqa: E731
    full = statistics.fmean(r["peak_bytes"] for r in results["full"])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU {_machine()}, 1 thread per process"
    measure = "max_memory_allocated" if torch.cuda.is_available() else "peak RSS − RSS before the networks"
    lines = [f"Peak memory of {STEPS} DMD2-style steps (generator + fake-score update, AdamW), batch {BATCH}, on a "
             f"small SD-shaped UNet ({sum(1 for _ in SMALL_SD_UNET['block_out_channels'])} levels, widths "
             f"{SMALL_SD_UNET['block_out_channels']}); LoRA rank {LORA_RANK} on attention projections; {measure}; "
             f"mean ± std over {seeds} seeds; {device}, torch {torch.__version__}.", "",
             "| layout | trainable parameters | peak memory (MiB) | ratio to full copies |", "|---|---|---|---|"]
    for variant in VARIANTS:
        peaks = [mib(r["peak_bytes"]) for r in results[variant]]
        ratio = statistics.fmean(r["peak_bytes"] for r in results[variant]) / full
        lines.append(f"| {variant} | {results[variant][0]['trainable']:,} | {statistics.fmean(peaks):.1f} ± "
                     f"{statistics.stdev(peaks):.1f} | {ratio:.2f} |")
    lines += ["", f"SDXL's UNet: {counts['base']:,} parameters; a rank-{LORA_RANK} attention LoRA adds "
              f"{counts['adapter']:,} per adapter. Weights + gradients + AdamW state in fp32, excluding activations:",
              "", "| layout | GiB |", "|---|---|"]
    for variant in ("full", "lora"):
        lines.append(f"| {variant} | {state_bytes(variant, counts['base'], counts['adapter']) / 2**30:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        sys.path.insert(0, str(ROOT))
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]))))
    else:
        sys.exit("usage: python eval/memory.py worker <full|lora|lora+ckpt> <seed>; "
                 "tables: python eval/bench.py memory")
