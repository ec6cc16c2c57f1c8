"""Tiny randomly initialised diffusers components built from configs (no downloads), shaped like real pipelines:
for tests, the README's examples and trying a recipe before pointing it at real weights."""
from __future__ import annotations

import string


def tiny_clip_tokenizer(model_max_length: int = 16):
    """A CLIPTokenizer over single characters (no merges): every prompt of ASCII letters and digits tokenises."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):  # CLIP's BPE marks a word's last symbol with </w>
        for ch in string.ascii_lowercase + string.digits:
            vocab[ch + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_text_to_image_pipeline(prediction_type: str = "epsilon", seed: int = 0, width: int = 32):
    """A ``StableDiffusionPipeline`` with SD 1.5's structure at toy size: VAE (16×16×3 ↔ 4×8×8 latents), CLIP text
    encoder (``width`` wide, 16 tokens), cross-attention UNet2DConditionModel and SD's DDIM scheduler config."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=width,
                                norm_num_groups=8, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=16)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_t5_tokenizer():
    """A T5Tokenizer (unigram) over single characters and word-initial characters: every lowercase ASCII prompt
    tokenises, no sentencepiece model file needed."""
    from transformers import T5Tokenizer

    chars = string.ascii_lowercase + string.digits
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("▁" + c, -3.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _tiny_clip(tokenizer, width: int, with_projection: bool = False, projection_dim: int = 16):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, bos_token_id=0,
                            eos_token_id=1, pad_token_id=1, projection_dim=projection_dim)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _tiny_t5(tokenizer, width: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))


def _tiny_vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         sample_size=16, layers_per_block=1, **kw)


def _perturbed(module, scale: float = 0.05):
    """Random weights everywhere (diffusers zero-initialises output projections, which would hide the conditioning)."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def tiny_dit_pipeline(seed: int = 0, scheduler=None):
    """A ``DiTPipeline`` at toy size: class-conditional DiT transformer with learned-sigma output channels (1000
    classes + the null class 1000, as DiTPipeline hard-codes), 4×8×8 latents, a small VAE."""
    import torch
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8,
                                        num_attention_heads=2, in_channels=4, out_channels=8, num_embeds_ada_norm=1000,
                                        norm_type="ada_norm_zero", norm_elementwise_affine=False)
    scheduler = scheduler or DDIMScheduler(clip_sample=False)
    return DiTPipeline(transformer=_perturbed(transformer), vae=_tiny_vae(), scheduler=scheduler)


def tiny_sdxl_pipeline(seed: int = 0, force_zeros_for_empty_prompt: bool = True):
    """A ``StableDiffusionXLPipeline`` at toy size: two CLIP text encoders (the second with a projection giving the
    pooled embedding), a UNet with ``addition_embed_type="text_time"`` (pooled text + six ``add_time_ids``), SDXL's
    Euler scheduler config."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tokenizer, width, pooled = tiny_clip_tokenizer(), 16, 16
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(4, 8),
                                norm_num_groups=8, cross_attention_dim=2 * width, use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=pooled + 6 * 8)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=_tiny_vae(), text_encoder=_tiny_clip(tokenizer, width),
                                     text_encoder_2=_tiny_clip(tokenizer, width, True, pooled), tokenizer=tokenizer,
                                     tokenizer_2=tiny_clip_tokenizer(), unet=_perturbed(unet), scheduler=scheduler,
                                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)


def tiny_sd3_pipeline(seed: int = 0):
    """A ``StableDiffusion3Pipeline`` at toy size: MMDiT (SD3Transformer2DModel), two CLIP encoders with projections
    (pooled 2 × 16), a T5 encoder (width 32), a VAE with SD3-like scaling and shift factors, flow matching."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer, width = tiny_clip_tokenizer(), 16
    t5_tokenizer = tiny_t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=2 * width,
                                        caption_projection_dim=16, pooled_projection_dim=2 * width,
                                        pos_embed_max_size=8)
    return StableDiffusion3Pipeline(
        transformer=_perturbed(transformer), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(scaling_factor=1.5035, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_tiny_clip(tokenizer, width, True, width), tokenizer=tokenizer,
        text_encoder_2=_tiny_clip(tokenizer, width, True, width), tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=_tiny_t5(t5_tokenizer, 2 * width), tokenizer_3=t5_tokenizer)


def tiny_pixart_pipeline(seed: int = 0):
    """A ``PixArtAlphaPipeline`` at toy size: PixArt transformer (learned-sigma output channels), T5 encoder with
    its attention mask, DDIM."""
    import torch
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=2, caption_channels=32, in_channels=4, out_channels=8,
                                           cross_attention_dim=16, num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                                           attention_bias=True, activation_fn="gelu-approximate")
    return PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=_tiny_t5(tokenizer, 32), vae=_tiny_vae(),
                               transformer=_perturbed(transformer), scheduler=DDIMScheduler(clip_sample=False))


TINY_UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                 norm_num_groups=8, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)


def tiny_gendiv_pipelines(seed: int = 0, num_classes: int = 3) -> dict:
    """One tiny instance of each gendiv pipeline, by class name, on 8×8 one-channel images: a class-conditional
    ``GenDivPipeline`` with a stochastic scheduler (SDE-DPM-Solver++), a ``OneStepPipeline`` whose generator starts
    as that denoiser, a ``ReflectedDiffusionPipeline`` on [0, 1] (reflected SDE) and a ``OneStepTextToImagePipeline``
    over ``tiny_text_to_image_pipeline``'s components."""
    import torch
    from diffusers import EDMDPMSolverMultistepScheduler, UNet2DModel

    from .models import OneStepGenerator, UNetDenoiser
    from .models.latent_text import text_denoiser
    from .pipelines import GenDivPipeline, OneStepPipeline, OneStepTextToImagePipeline, ReflectedDiffusionPipeline
    from .schedulers import ReflectedSDEScheduler

    torch.manual_seed(seed)
    denoiser = UNetDenoiser.from_unet(UNet2DModel(**TINY_UNET, num_class_embeds=num_classes + 1),
                                      num_classes=num_classes)
    sd = tiny_text_to_image_pipeline(seed=seed)
    text_student = OneStepGenerator.from_denoiser(text_denoiser(sd.unet, sd.scheduler, sd.tokenizer, sd.text_encoder),
                                                  sigma_init=2.5)
    pipes = [GenDivPipeline(denoiser, EDMDPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")),
             OneStepPipeline(OneStepGenerator.from_denoiser(denoiser, sigma_init=2.5)),
             ReflectedDiffusionPipeline(denoiser, ReflectedSDEScheduler()),
             OneStepTextToImagePipeline(student=text_student, vae=sd.vae, text_encoder=sd.text_encoder,
                                        tokenizer=sd.tokenizer)]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return {type(pipe).__name__: pipe for pipe in pipes}
