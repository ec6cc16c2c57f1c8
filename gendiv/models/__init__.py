from .denoiser import DENOISER_CLASSES, MLPDenoiser, UNetDenoiser, build_denoiser, scalar_embedding, with_scalar_condition
from .discriminator import DiscriminatorHead, discriminator_loss, generator_gan_loss
from .generator import OneStepGenerator

__all__ = ["with_scalar_condition", "DENOISER_CLASSES", "MLPDenoiser", "UNetDenoiser", "OneStepGenerator", "build_denoiser", "scalar_embedding",
           "DiscriminatorHead", "discriminator_loss", "generator_gan_loss"]
