from .denoiser import DENOISER_CLASSES, MLPDenoiser, UNetDenoiser, build_denoiser, scalar_embedding, with_scalar_condition
from .from_diffusers import denoiser_from_pipeline_folder, denoiser_from_unet_and_scheduler
from .discriminator import DiscriminatorHead, MultiScaleDiscriminatorHead, discriminator_loss, generator_gan_loss
from .generator import OneStepGenerator
from .latent_text import LatentTextTeacher, encode_prompts, latent_text_teacher_from_folder
from .pipeline_denoiser import PipelineDenoiser
from .pipeline_teachers import PipelineTeacher

__all__ = ["with_scalar_condition", "DENOISER_CLASSES", "MLPDenoiser", "UNetDenoiser", "OneStepGenerator", "build_denoiser", "scalar_embedding",
           "DiscriminatorHead", "MultiScaleDiscriminatorHead", "discriminator_loss", "generator_gan_loss", "denoiser_from_pipeline_folder",
           "denoiser_from_unet_and_scheduler", "LatentTextTeacher", "encode_prompts", "latent_text_teacher_from_folder",
           "PipelineDenoiser", "PipelineTeacher"]
