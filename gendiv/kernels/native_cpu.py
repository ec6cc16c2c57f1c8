"""f-distill's whole weighting (and the plain weighted difference) as one hand-written C++ function on the CPU.

torch.compile fuses the weighting into a few loops, but on the CPU its per-call dispatch and guards cost tens of
µs, more than the arithmetic of a [B]-sized weight path (README, Speed). Here the [B]-sized part (ratio, σ bins,
h(r), batch mean) is a scalar loop and the CHW-sized part two SIMD passes per sample (Σ|x − Dᵀ| in 32 float partial
sums, then the weighted difference, the row still in cache), threaded over samples: one call, the same formulas as
``fused_weighting.fdistill_weighting`` (the reference it is tested against, tests/test_performance.py).

Built on first use with torch.utils.cpp_extension (g++ and ninja; about a minute, cached per machine in
``TORCH_EXTENSIONS_DIR``). ``available()`` says whether it can be built here; callers fall back otherwise.
"""
from __future__ import annotations

import functools
import shutil

import torch

# h(r) = f''(r)·r² of the closed-form divergences (distill/divergences.py), by code; −1: a given weight
H_CODES = {"reverse_kl": 0, "softened_reverse_kl": 1, "jensen_shannon": 2, "squared_hellinger": 3, "forward_kl": 4,
           "jeffreys": 5, "pearson_chi2": 6, "alpha": 7}

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

static inline double h_of(int64_t code, double r, double a) {
  switch (code) {
    case 0: return 1.0;                       // reverse KL
    case 1: return 1.0 / (1.0 + r);           // softened reverse KL
    case 2: return r / (1.0 + r);             // Jensen-Shannon
    case 3: return 0.5 * std::sqrt(r);        // squared Hellinger
    case 4: return r;                         // forward KL
    case 5: return 1.0 + r;                   // Jeffreys
    case 6: return 2.0 * r * r;               // Pearson chi^2
    default: return std::pow(r, a);           // alpha-divergence
  }
}

// sum_j |x_j - t_j| in LANES independent float partial sums (the compiler turns the lane loop into SIMD; a single
// running sum would be a serial dependency chain), added up in double at the end: float error ~ (N/LANES)·2^-24
static inline double abs_difference_sum(const float* __restrict__ x, const float* __restrict__ t, int64_t n) {
  constexpr int64_t LANES = 32;
  float part[LANES] = {0.0f};
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES)
    for (int64_t k = 0; k < LANES; ++k) part[k] += std::fabs(x[j + k] - t[j + k]);
  double acc = 0.0;
  for (int64_t k = 0; k < LANES; ++k) acc += part[k];
  for (; j < n; ++j) acc += std::fabs((double)x[j] - (double)t[j]);
  return acc;
}

// g_b = w_b (Df_b - Dt_b) / (mean|x_b - Dt_b| + eps), w from the ratio path (h_code >= 0) or given (h_code = -1)
std::vector<torch::Tensor> fdistill_weighting(
    torch::Tensor x, torch::Tensor dt, torch::Tensor df, torch::Tensor logits, torch::Tensor sigma,
    torch::Tensor edges, torch::Tensor means, torch::Tensor seen, int64_t h_code, double alpha,
    double logit_clamp, double ratio_min, double ratio_max, double bin_ema, bool use_bins,
    bool normalize_weights, bool normalize, double eps) {
  const int64_t B = x.size(0), N = x.numel() / B;
  auto xc = x.contiguous(), tc = dt.contiguous(), fc = df.contiguous();
  auto lc = logits.contiguous();
  const float* lp = lc.data_ptr<float>();
  std::vector<double> w(B);
  torch::Tensor new_means = means, new_seen = seen;
  if (h_code < 0) {
    for (int64_t b = 0; b < B; ++b) w[b] = lp[b];
  } else {
    for (int64_t b = 0; b < B; ++b) {
      double l = std::min(std::max((double)lp[b], -logit_clamp), logit_clamp);
      w[b] = std::min(std::max((double)(float)std::exp((float)l), ratio_min), ratio_max);
    }
    if (use_bins) {
      const int64_t nb = means.size(0);
      auto sc = sigma.contiguous();
      auto ec = edges.contiguous();
      const float* sp = sc.data_ptr<float>();
      const float* ep = ec.data_ptr<float>();
      float* mp = new_means.data_ptr<float>();
      bool* seenp = new_seen.data_ptr<bool>();
      std::vector<int64_t> idx(B);
      std::vector<double> sums(nb, 0.0), counts(nb, 0.0);
      for (int64_t b = 0; b < B; ++b) {
        int64_t k = 0;  // bucketize(sigma, inner edges, right=True): inner edges <= sigma
        for (int64_t e = 1; e < nb; ++e) k += (ep[e] <= sp[b]);
        idx[b] = std::min(k, nb - 1);
        sums[idx[b]] += (float)w[b];
        counts[idx[b]] += 1.0;
      }
      for (int64_t k = 0; k < nb; ++k) {
        if (counts[k] > 0) {
          double decay = seenp[k] ? bin_ema : 0.0;
          mp[k] = (float)(decay * mp[k] + (1.0 - decay) * (float)(sums[k] / counts[k]));
          seenp[k] = true;
        }
      }
      for (int64_t b = 0; b < B; ++b) w[b] = (float)((float)w[b] / (mp[idx[b]] + 1e-6f));
    }
    double total = 0.0;
    for (int64_t b = 0; b < B; ++b) { w[b] = (float)h_of(h_code, w[b], alpha); total += w[b]; }
    if (normalize_weights) {
      double mean = std::max(total / B, eps);
      for (int64_t b = 0; b < B; ++b) w[b] = (float)(w[b] / mean);
    }
  }
  auto g = torch::empty_like(xc);
  const float* __restrict__ xp = xc.data_ptr<float>();
  const float* __restrict__ tp = tc.data_ptr<float>();
  const float* __restrict__ fp = fc.data_ptr<float>();
  float* __restrict__ gp = g.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float* __restrict__ xr = xp + b * N;
      const float* __restrict__ tr = tp + b * N;
      const float* __restrict__ fr = fp + b * N;
      float* __restrict__ gr = gp + b * N;
      double c = 1.0;
      if (normalize) c = (float)(abs_difference_sum(xr, tr, N) / N);
      const float scale = (float)(w[b] / (c + eps));
      for (int64_t j = 0; j < N; ++j) gr[j] = (fr[j] - tr[j]) * scale;  // auto-vectorised
    }
  });
  return {g, new_means, new_seen};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("fdistill_weighting", &fdistill_weighting); }
"""


def available() -> bool:
    """A C++ compiler and ninja are present (the build itself may still fail: ``_module`` raises then)."""
    return shutil.which("c++") is not None and (shutil.which("ninja") is not None or _has_ninja_package())


def _has_ninja_package() -> bool:
    try:
        import ninja  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _module():
    from torch.utils.cpp_extension import load_inline

    return load_inline("gendiv_fused_weighting", cpp_sources=_SOURCE, extra_cflags=["-O3", "-march=native"],
                       verbose=False)


def _prepare(x, d_teacher, d_fake):
    if x.device.type != "cpu" or not (x.dtype == d_teacher.dtype == d_fake.dtype == torch.float32):
        raise ValueError("the cpp backend takes float32 CPU tensors; use eager or compile for others")
    return x.detach(), d_teacher.detach(), d_fake.detach()


_EMPTY = (torch.zeros(0), torch.zeros(0, dtype=torch.bool))  # placeholders for the bin state when bins are off


def h_code(divergence_name: str) -> tuple[int, float]:
    """(code, α) of a closed-form divergence name for the kernel."""
    if divergence_name.startswith("alpha:"):
        return H_CODES["alpha"], float(divergence_name.split(":", 1)[1])
    return H_CODES[divergence_name], 0.0


def fdistill_weighting_cpp(x, d_teacher, d_fake, logits, sigma, edges, means, seen, divergence_name: str,
                           logit_clamp: float = 10.0, ratio_min: float = 0.1, ratio_max: float = 20.0,
                           bin_ema: float = 0.0, use_bins: bool = True, normalize_weights: bool = True,
                           normalize: bool = True, eps: float = 1e-6):
    """(g, bin means, bin-seen flags), as ``fused_weighting.fdistill_weighting``, except that ``means`` and ``seen``
    are updated in place (and returned), saving two copies per call."""
    x, d_teacher, d_fake = _prepare(x, d_teacher, d_fake)
    code, alpha = h_code(divergence_name)
    empty, no_flags = _EMPTY
    g, means_out, seen_out = _module().fdistill_weighting(
        x, d_teacher, d_fake, logits.detach().float().contiguous(),
        sigma.float() if use_bins else empty, edges.float() if use_bins else empty,
        means if use_bins else empty, seen if use_bins else no_flags, code, alpha,
        logit_clamp, ratio_min, ratio_max, bin_ema, use_bins, normalize_weights, normalize, eps)
    return g, (means_out if use_bins else means), (seen_out if use_bins else seen)


def weighted_difference_cpp(x, d_teacher, d_fake, weight, normalize: bool = True, eps: float = 1e-6):
    """g = w·(Dᶠ − Dᵀ)/(mean|x − Dᵀ| + ε) with a given per-sample weight w."""
    x, d_teacher, d_fake = _prepare(x, d_teacher, d_fake)
    empty, no_flags = _EMPTY
    g, _, _ = _module().fdistill_weighting(x, d_teacher, d_fake, weight.detach().float().contiguous(), empty, empty,
                                           empty, no_flags, -1, 0.0, 0.0, 0.0, 0.0, 0.0, False, False, normalize, eps)
    return g
