from .denoising import denoising_loss

__all__ = ["denoising_loss"]
