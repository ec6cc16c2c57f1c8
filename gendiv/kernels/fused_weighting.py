"""f-distill's whole per-step weighting as one function, for one compiled region (issue 13).

    r  = clamp(exp(clamp(ℓ, ±L)), r_min, r_max)                 ratio from the discriminator logit
    r ← r / m_b(σ),  m_b ← EMA of the batch mean of r in σ-bin b  (NVIDIA's bin estimator; bins updated in place)
    ĥ  = h(r) / mean_batch h(r)                                  divergence weight, batch-normalised
    g  = ĥ·(Dᶠ − Dᵀ)/(mean_CHW|x − Dᵀ| + ε)                      the pseudo-gradient

Eagerly these are a dozen small [B]-sized kernels around the CHW-sized difference; compiled (``backend="compile"``)
inductor fuses them into a few loops over the batch; ``backend="triton"`` is two kernels on CUDA (one program for the
[B]-sized weight path, then one program per sample for the difference); ``backend="cpp"`` one C++ function on the
CPU (``native_cpu.py``). The function is pure (returns the new bin state) so it
traces whole; the eager composition in gendiv.kernels.ratio + weighted_difference is the reference it must equal
(tests/test_performance.py). Multi-process runs keep the eager path, which all-reduces the batch statistics.
"""
from __future__ import annotations

import functools

import torch

from .native_cpu import h_code
from .score_difference import triton_available, weighted_difference_eager, weighted_difference_triton


def fdistill_weighting(x, d_teacher, d_fake, logits, sigma, edges, means, seen, h, logit_clamp: float = 10.0,
                       ratio_min: float = 0.1, ratio_max: float = 20.0, bin_ema: float = 0.0, use_bins: bool = True,
                       normalize_weights: bool = True, normalize: bool = True, eps: float = 1e-6):
    """(g, new bin means, new bin-seen flags)."""
    r = logits.detach().float().clamp(-logit_clamp, logit_clamp).exp().clamp(ratio_min, ratio_max)
    if use_bins:
        num_bins = means.shape[0]
        idx = torch.bucketize(sigma.float(), edges[1:-1], right=True).clamp(0, num_bins - 1)
        sums = torch.zeros(num_bins, device=r.device).scatter_add(0, idx, r)
        counts = torch.zeros(num_bins, device=r.device).scatter_add(0, idx, torch.ones_like(r))
        hit = counts > 0
        decay = torch.where(seen, torch.full_like(sums, bin_ema), torch.zeros_like(sums))
        updated = decay * means + (1 - decay) * sums / counts.clamp_min(1)
        means = torch.where(hit, updated, means)
        seen = seen | hit
        r = r / (means[idx] + 1e-6)
    w = h(r)
    if normalize_weights:
        w = w / w.mean().clamp_min(eps)
    return weighted_difference_eager(x, d_teacher, d_fake, w, normalize, eps), means, seen


@functools.cache
def _compiled():
    return torch.compile(fdistill_weighting, dynamic=False, fullgraph=True)


def fdistill_weighting_compiled(*args, **kwargs):
    return _compiled()(*args, **kwargs)


@functools.cache
def _triton_weights_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(logit_ptr, sigma_ptr, edges_ptr, means_ptr, seen_ptr, w_ptr, new_means_ptr, new_seen_ptr, batch,
               logit_clamp, ratio_min, ratio_max, bin_ema, alpha, eps, H_CODE: tl.constexpr, USE_BINS: tl.constexpr,
               NUM_BINS: tl.constexpr, NORMALIZE_WEIGHTS: tl.constexpr, BLOCK_B: tl.constexpr):
        offs = tl.arange(0, BLOCK_B)
        mask = offs < batch
        logit = tl.load(logit_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.exp(tl.minimum(tl.maximum(logit, -logit_clamp), logit_clamp))
        r = tl.minimum(tl.maximum(r, ratio_min), ratio_max)
        if USE_BINS:
            s = tl.load(sigma_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            idx = tl.zeros([BLOCK_B], dtype=tl.int32)
            for e in tl.static_range(1, NUM_BINS):  # bucketize over the inner edges (right=True)
                idx += (tl.load(edges_ptr + e) <= s).to(tl.int32)
            denom = tl.full([BLOCK_B], 1.0, dtype=tl.float32)
            for k in tl.static_range(NUM_BINS):
                in_bin = (idx == k) & mask
                count = tl.sum(in_bin.to(tl.float32), axis=0)
                total = tl.sum(tl.where(in_bin, r, 0.0), axis=0)
                old = tl.load(means_ptr + k)
                was_seen = tl.load(seen_ptr + k) != 0
                decay = tl.where(was_seen, bin_ema, 0.0)
                mean = tl.where(count > 0, decay * old + (1 - decay) * total / tl.maximum(count, 1.0), old)
                tl.store(new_means_ptr + k, mean)
                tl.store(new_seen_ptr + k, (was_seen | (count > 0)).to(tl.int8))
                denom = tl.where(idx == k, mean + 1e-6, denom)
            r = r / denom
        if H_CODE == 0:
            h = tl.full([BLOCK_B], 1.0, dtype=tl.float32)
        elif H_CODE == 1:
            h = 1.0 / (1.0 + r)
        elif H_CODE == 2:
            h = r / (1.0 + r)
        elif H_CODE == 3:
            h = 0.5 * tl.sqrt(r)
        elif H_CODE == 4:
            h = r
        elif H_CODE == 5:
            h = 1.0 + r
        elif H_CODE == 6:
            h = 2.0 * r * r
        else:
            h = tl.exp(alpha * tl.log(r))
        h = tl.where(mask, h, 0.0)
        if NORMALIZE_WEIGHTS:
            h = h / tl.maximum(tl.sum(h, axis=0) / batch, eps)
        tl.store(w_ptr + offs, h, mask=mask)

    return kernel


def fdistill_weighting_triton(x, d_teacher, d_fake, logits, sigma, edges, means, seen, divergence_name: str,
                              logit_clamp: float = 10.0, ratio_min: float = 0.1, ratio_max: float = 20.0,
                              bin_ema: float = 0.0, use_bins: bool = True, normalize_weights: bool = True,
                              normalize: bool = True, eps: float = 1e-6):
    """Two Triton kernels: the [B]-sized weight path in one program, then the per-sample weighted difference."""
    if not triton_available():
        raise RuntimeError("the triton backend needs CUDA (or TRITON_INTERPRET=1 for CPU tests)")
    batch, dev = x.shape[0], x.device
    code, alpha = h_code(divergence_name)
    w = torch.empty(batch, dtype=torch.float32, device=dev)
    dummy = torch.zeros(1, dtype=torch.float32, device=dev)
    if use_bins:
        new_means, new_seen = torch.empty_like(means), torch.empty(seen.shape, dtype=torch.int8, device=dev)
        args = (sigma.float().contiguous(), edges.float().contiguous(), means.contiguous(), seen.to(torch.int8))
    else:
        new_means = new_seen = dummy
        args = (dummy, dummy, dummy, dummy.to(torch.int8))
    num_bins = means.shape[0] if use_bins else 1
    _triton_weights_kernel()[(1,)](logits.detach().float().contiguous(), *args, w, new_means, new_seen, batch,
                                   logit_clamp, ratio_min, ratio_max, bin_ema, alpha, eps, H_CODE=code,
                                   USE_BINS=use_bins, NUM_BINS=num_bins, NORMALIZE_WEIGHTS=normalize_weights,
                                   BLOCK_B=max(16, 1 << (batch - 1).bit_length()))
    g = weighted_difference_triton(x.detach(), d_teacher.detach(), d_fake.detach(), w, normalize, eps)
    if not use_bins:
        return g, means, seen
    return g, new_means, new_seen.bool()
