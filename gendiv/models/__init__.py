from .denoiser import DENOISER_CLASSES, MLPDenoiser, UNetDenoiser, build_denoiser, scalar_embedding
from .generator import OneStepGenerator

__all__ = ["DENOISER_CLASSES", "MLPDenoiser", "UNetDenoiser", "OneStepGenerator", "build_denoiser", "scalar_embedding"]
