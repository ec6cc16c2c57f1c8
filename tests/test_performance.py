"""Throughput switches (issue 13) change nothing in the math: each is compared with the plain path."""
import copy
import sys

import pytest
import torch

from gendiv.kernels import native_cpu
from gendiv.kernels.fused_weighting import fdistill_weighting
from gendiv.models import MLPDenoiser, UNetDenoiser
from gendiv.distill import FDistill
from gendiv.distill import StepContext
from gendiv.training.performance import adamw, apply_memory_format, is_image_source, native_bf16, resolve_mixed_precision


def _context(batch=8, seed=0, shape=(3, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x, t, f = (torch.randn(batch, *shape, generator=g) for _ in range(3))
    return StepContext(x=x, sigma=torch.rand(batch, generator=g) * 3, x_sigma=x, cond=None, d_teacher=t, d_fake=f,
                       logits=2 * torch.randn(batch, generator=g))


@pytest.mark.parametrize("divergence", ["jensen_shannon", "forward_kl", "reverse_kl", "alpha:0.5"])
@pytest.mark.parametrize("options", [{}, {"ratio": {"sigma_bins": 0}},
                                     {"normalize_weights": False, "ratio": {"bin_ema": 0.9}}])
def test_fused_weighting_equals_the_eager_composition(divergence, options):
    """The pure fused function (what the compiled region traces) equals density_ratio → σ bins → h → batch mean →
    weighted difference, over several steps of bin state, to float32 round-off (rtol 1e-5)."""
    eager = FDistill(divergence, kernel_backend="eager", **options)
    fused = copy.deepcopy(eager)
    for step in range(3):
        ctx = _context(seed=step)
        want = eager.pseudo_gradient(ctx)
        b = fused.bins
        got, means, seen = fdistill_weighting(
            ctx.x, ctx.d_teacher, ctx.d_fake, ctx.logits, ctx.sigma, None if b is None else b.edges,
            None if b is None else b.means, None if b is None else b.seen, fused.divergence.h, use_bins=b is not None,
            bin_ema=fused.options.ratio.bin_ema, normalize_weights=fused.options.normalize_weights)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        if b is not None:
            b.means.copy_(means)
            b.seen.copy_(seen)
            torch.testing.assert_close(b.means, eager.bins.means)


def test_compiled_weighting_region_equals_eager_and_keeps_the_bin_state():
    eager = FDistill("jensen_shannon", kernel_backend="eager")
    compiled = FDistill("jensen_shannon", kernel_backend="compile")
    for step in range(2):
        ctx = _context(seed=10 + step)
        torch.testing.assert_close(compiled.pseudo_gradient(ctx), eager.pseudo_gradient(ctx), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.bins.means, eager.bins.means)
    assert torch.equal(compiled.bins.seen, eager.bins.seen)
    # a divergence given as a callable f (h by autograd) keeps the eager path
    custom = FDistill(lambda r: r * torch.log(r), kernel_backend="compile")
    assert not custom._fused_path(_context())
    assert compiled._fused_path(_context()) and not eager._fused_path(_context())


def test_channels_last_unet_gives_the_same_denoising(tiny_unet_config):
    torch.manual_seed(0)
    den = UNetDenoiser(unet_config=tiny_unet_config)
    x, sigma = torch.randn(4, 1, 8, 8), torch.tensor([0.1, 1.0, 5.0, 40.0])
    plain = den(x, sigma)
    apply_memory_format(den, "auto")
    assert den.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(den(x, sigma), plain, rtol=1e-5, atol=1e-5)


def test_fused_adamw_updates_equal_plain_adamw():
    torch.manual_seed(0)
    a = MLPDenoiser(dim=2, hidden=16, depth=1)
    b = copy.deepcopy(a)
    opt_a = adamw(a.parameters(), 1e-3, [0.9, 0.99], 0.01, fused=False)
    opt_b = adamw(b.parameters(), 1e-3, [0.9, 0.99], 0.01, fused=True)
    assert opt_b.defaults.get("fused") and not opt_a.defaults.get("fused")
    assert adamw(copy.deepcopy(a).parameters(), 1e-3, [0.9, 0.99], 0.01, fused="auto").defaults.get("fused")  # CPU too
    for step in range(3):
        x = torch.randn(32, 2, generator=torch.Generator().manual_seed(step))
        for m, opt in ((a, opt_a), (b, opt_b)):
            m(x, torch.ones(32)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)


def test_compiled_network_gives_the_same_output():
    torch.manual_seed(0)
    den = MLPDenoiser(dim=2, hidden=16, depth=1)
    x, sigma = torch.randn(16, 2), torch.rand(16) + 0.1
    plain = den(x, sigma)
    compiled = copy.deepcopy(den)
    compiled.compile()
    torch.testing.assert_close(compiled(x, sigma), plain, rtol=1e-5, atol=1e-6)
    assert set(compiled.state_dict()) == set(den.state_dict())  # checkpoints keep their keys


def test_precision_policy_and_bf16_losses_match_fp32(tiny_unet_config):
    """auto: bf16 only for image models on bf16-native devices; a bf16-autocast denoising loss stays within 2% of fp32
    (the loss itself is computed in fp32 from the upcast output)."""
    assert resolve_mixed_precision("auto", image_data=False) == "no"
    assert resolve_mixed_precision("auto", image_data=True) == ("bf16" if native_bf16("cpu") else "no")
    assert resolve_mixed_precision("fp16", image_data=False) == "fp16"
    assert is_image_source("digits") and is_image_source("folder:x") and not is_image_source("toy:ring8_imbalanced")
    from gendiv.objectives import denoising_loss

    torch.manual_seed(0)
    den = UNetDenoiser(unet_config=tiny_unet_config)
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    sigma = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 40.0])
    noise = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fp32 = denoising_loss(den, x0, sigma=sigma, noise=noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = denoising_loss(den, x0, sigma=sigma, noise=noise)
    assert bf16.dtype == torch.float32
    assert abs(float(bf16) - float(fp32)) <= 0.02 * float(fp32)


def test_reusing_generator_samples_saves_a_generator_pass(tmp_path):
    """With method.reuse_generator_samples the fake-score update trains on the generator step's own samples (DMD2's
    order): one generator forward per generator step instead of two; the run still trains and resumes."""
    from gendiv.training import DistillConfig, load_config
    from gendiv.training.distill import DistillTrainer

    calls = {}
    for reuse in (False, True):
        cfg = load_config(DistillConfig, None, [f"run.output_dir={tmp_path / str(reuse)}", "run.steps=4", "run.progress=false",
                                                "method.fake_warmup_steps=0", "student.model.hidden=16",
                                                "student.model.depth=1", "run.batch_size=16",
                                                f"method.reuse_generator_samples={str(reuse).lower()}",
                                                "method.fake_updates_per_generator_update=1"])
        trainer = DistillTrainer(cfg)
        count = [0]
        trainer.unwrapped["generator"].register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
        for _ in range(4):
            metrics = trainer.train_step()
            trainer.step += 1
        assert "generator_grad_norm" in metrics and "fake_loss" in metrics
        calls[reuse] = count[0]
    assert calls == {False: 8, True: 4}


DIVERGENCES_ALL = ["jensen_shannon", "forward_kl", "reverse_kl", "alpha:0.5", "squared_hellinger", "softened_reverse_kl",
                   "jeffreys", "pearson_chi2"]
OPTIONS = [{}, {"ratio": {"sigma_bins": 0}}, {"normalize_weights": False, "ratio": {"bin_ema": 0.9}},
           {"ratio": {"bin_spacing": "log", "bin_ema": 0.5}}]
_NATIVE_CHECK = """
import sys, torch
from gendiv.distill import FDistill
from gendiv.distill import StepContext
backend, divergences, options = sys.argv[1], {divergences!r}, {options!r}
for div in divergences:
    for opts in options:
        eager, fused = FDistill(div, kernel_backend="eager", **opts), FDistill(div, kernel_backend=backend, **opts)
        for step, batch in enumerate([8, 5, 13]):  # the bin state carries over steps; batch sizes vary
            g = torch.Generator().manual_seed(step)
            x, t, f = (torch.randn(batch, 3, 8, 8, generator=g) for _ in range(3))
            c = StepContext(x=x, sigma=torch.rand(batch, generator=g) * 3, x_sigma=x, cond=None, d_teacher=t,
                            d_fake=f, logits=2 * torch.randn(batch, generator=g))
            assert fused._fused_backend(c) == backend
            torch.testing.assert_close(fused.pseudo_gradient(c), eager.pseudo_gradient(c), rtol=1e-5, atol=1e-6)
            if eager.bins is not None:
                torch.testing.assert_close(fused.bins.means, eager.bins.means)
                assert torch.equal(fused.bins.seen, eager.bins.seen)
print("ok")
"""


def _run_native_check(backend, env=None):
    import os
    import subprocess
    import sys

    code = _NATIVE_CHECK.format(divergences=DIVERGENCES_ALL, options=OPTIONS)
    res = subprocess.run([sys.executable, "-c", code, backend], env={**os.environ, **(env or {})}, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.skipif(not native_cpu.available(), reason="needs a C++ compiler and ninja")
def test_cpp_weighting_equals_eager_for_every_divergence():
    """The one-function C++ weighting (kernels/native_cpu.py) equals the eager composition for every closed-form h,
    with and without σ bins (linear and log), bin EMA and weight normalisation, over steps of bin state."""
    _run_native_check("cpp")


def test_triton_weighting_equals_eager_under_the_interpreter():
    """The two Triton kernels of the fused weighting, run by Triton's interpreter on the CPU: the same numbers."""
    pytest.importorskip("triton")
    _run_native_check("triton", {"TRITON_INTERPRET": "1"})


@pytest.mark.skipif(not native_cpu.available(), reason="needs a C++ compiler and ninja")
def test_cpp_weighted_difference_and_backend_rules():
    from gendiv.kernels import resolve_backend, weighted_difference

    g = torch.Generator().manual_seed(0)
    for shape in [(4, 3, 8, 8), (3, 5000)]:
        x, dt, df = (torch.randn(*shape, generator=g) for _ in range(3))
        w = torch.rand(shape[0], generator=g)
        for norm in (True, False):
            torch.testing.assert_close(weighted_difference(x, dt, df, w, normalize=norm, backend="cpp"),
                                       weighted_difference(x, dt, df, w, normalize=norm), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cpp runs on the CPU"):
        resolve_backend("cpp", "cuda")
    assert resolve_backend("auto", "cpu") == "eager"
    # float64 inputs (exact tests) keep the eager path under cpp
    ctx = _context()
    ctx64 = StepContext(x=ctx.x.double(), sigma=ctx.sigma, x_sigma=ctx.x_sigma, cond=None, d_teacher=ctx.d_teacher.double(),
                        d_fake=ctx.d_fake.double(), logits=ctx.logits)
    assert FDistill("jensen_shannon", kernel_backend="cpp")._fused_backend(ctx64) is None


_ALLOCATOR_CHECK = """
import json, resource, sys, torch
from gendiv.training import DistillConfig, distill, load_config
from gendiv.training.performance import keep_freed_memory

setting, out = sys.argv[1] == "true", sys.argv[2]
applied = keep_freed_memory(setting)  # False: glibc's static defaults, every large block mmapped anew

def faults_per_alloc():  # 8 MiB tensors, allocated, touched and freed in turn; the median over 20 (a heap that
    faults = []           # grows once, when other allocations fragment it, is not the steady state)
    for _ in range(23):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(2 ** 21).fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(faults[3:])[10]

faults = faults_per_alloc()
cfg = load_config(DistillConfig, None, [f"run.output_dir={out}", "run.steps=3", "run.progress=false",
                                        "method.fake_warmup_steps=0", "student.model.hidden=16", "student.model.depth=1",
                                        "run.batch_size=16", "run.log_every=1", f"run.keep_freed_memory={sys.argv[1]}"])
distill(cfg)
print(json.dumps({"applied": applied, "faults": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_memory_stops_page_faults_and_changes_no_loss(tmp_path):
    """run.keep_freed_memory: freed blocks stay in the process (no page faults on the next allocation of the same size,
    typically, against ~2,048 for 8 MiB from fresh pages), and a run's logged losses are bit-identical with and
    without it."""
    import json
    import subprocess

    results, logs = {}, {}
    for setting in ("true", "false"):
        out = tmp_path / setting
        res = subprocess.run([sys.executable, "-c", _ALLOCATOR_CHECK, setting, str(out)], capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        results[setting] = json.loads(res.stdout.strip().splitlines()[-1])
        logs[setting] = [{k: v for k, v in json.loads(line).items() if "time" not in k and "per_s" not in k}
                         for line in (out / "metrics.jsonl").read_text().splitlines()]
    if not results["true"]["applied"]:
        pytest.skip("not glibc")
    assert results["true"]["faults"] < 10 and results["false"]["faults"] > 1000, results
    assert logs["true"] == logs["false"] and len(logs["true"]) >= 3
