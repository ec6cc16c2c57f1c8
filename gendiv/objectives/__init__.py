"""Teacher-training objectives (the distillation methods live in ``gendiv.distill``)."""
from .denoising import denoising_loss, weighted_denoising_error
from .guidance_free import draw_beta, gft_conditional, gft_loss, model_guidance_loss

__all__ = ["denoising_loss", "weighted_denoising_error", "draw_beta", "gft_conditional", "gft_loss",
           "model_guidance_loss"]
