from .ratio import SigmaBinNormalizer, batch_normalized, density_ratio, global_mean
from .score_difference import BACKENDS, resolve_backend, triton_available, weighted_difference

__all__ = ["global_mean", "SigmaBinNormalizer", "batch_normalized", "density_ratio", "BACKENDS", "resolve_backend",
           "triton_available", "weighted_difference"]
