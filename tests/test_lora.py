"""LoRA students and fake scores on one frozen base (issue 22, part 3): views see only their adapter, the teacher
view is the untouched base, gradient checkpointing is exact with interleaved adapters, and the exported adapter loads
with stock ``load_lora_weights`` into the teacher's pipeline, whose one step equals gendiv's one-step student."""
import copy

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline

from gendiv import testing
from gendiv.models.lora import LoraOneStepGenerator, LoraSpec, SharedLora
from gendiv.models.teachers import load_teacher


def perturb(view, scale=0.05, seed=0):
    """Stands in for training: random adapter weights (B = 0 at initialisation makes every adapter the base)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in view.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    pipe = testing.tiny_text_to_image_pipeline()
    testing._perturbed(pipe.unet)
    pipe.save_pretrained(folder)
    return folder


def test_views_share_one_base_and_see_only_their_adapter(sd_folder):
    den, _, text = load_teacher(str(sd_folder))
    reference = copy.deepcopy(den)
    shared = SharedLora(den, LoraSpec(rank=4, alpha=8, target_modules=["to_q", "to_v"]))
    teacher, student, fake = shared.view(None), shared.view("student"), shared.view("fake")
    assert list(teacher.parameters()) == []
    n_student = sum(p.numel() for p in student.parameters())
    assert n_student == sum(p.numel() for p in fake.parameters()) > 0
    assert all(".student." in k.replace("/", ".") for k in student.state_dict())
    adapters = {id(p) for p in [*student.parameters(), *fake.parameters()]}
    assert not any(p.requires_grad for p in den.parameters() if id(p) not in adapters)  # the base is frozen
    x, sigma = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0.5, 3.0])
    cond = text.condition(["a cat", "dog"])
    with torch.no_grad():
        ref = reference(x, sigma, cond)
        torch.testing.assert_close(student(x, sigma, cond), ref)  # B = 0: the adapter starts as the teacher
        perturb(student)
        moved = student(x, sigma, cond)
        assert (moved - ref).abs().max() > 1e-3
        torch.testing.assert_close(teacher(x, sigma, cond), ref)  # adapters off: the base
        torch.testing.assert_close(fake(x, sigma, cond), ref)     # another adapter: untouched
        torch.testing.assert_close(student(x, sigma, cond), moved)
    assert all(p.requires_grad for p in student.parameters())
    with torch.no_grad():  # an EMA adapter starts as the student; a view's state_dict restores its adapter in place
        torch.testing.assert_close(shared.copy_adapter("student", "ema")(x, sigma, cond), moved)
        saved = copy.deepcopy(student.state_dict())
        perturb(student, seed=3)
        student.load_state_dict(saved)
        torch.testing.assert_close(student(x, sigma, cond), moved)
    assert shared.score_network().adapter == "score" and shared.score_network().adapter == "score_1"
    with pytest.raises(ValueError, match="lora rank must be a positive integer"):
        LoraSpec(rank=0)


def test_gradient_checkpointing_recomputes_with_the_adapter_that_ran(sd_folder):
    """The student's forward, then teacher and fake-score calls, then the student's backward while another adapter is
    active: the checkpointed recomputation must use the student's adapter, so the gradients equal those without
    checkpointing (diffusers' default checkpointing function recomputes with the active adapter and differs)."""
    grads = {}
    for mode in ("off", "adapter_checkpoint", "diffusers_default"):
        den, _, text = load_teacher(str(sd_folder))
        shared = SharedLora(den, LoraSpec(rank=4), gradient_checkpointing=mode != "off")
        if mode == "diffusers_default":
            shared.net.enable_gradient_checkpointing()
        torch.manual_seed(0)  # peft draws A at random
        student, fake, teacher = shared.view("student"), shared.view("fake"), shared.view(None)
        perturb(student, seed=0)
        perturb(fake, seed=1)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        cond = text.condition(["a cat", "dog"])
        out = student(x, torch.tensor([1.0, 2.0]), cond)
        with torch.no_grad():
            target = teacher(out, torch.tensor([0.7, 0.7]), cond) - fake(out, torch.tensor([0.7, 0.7]), cond)
        with shared.active("fake"):
            (out * target).sum().backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in student.parameters()])
        assert all(p.grad is None for p in fake.parameters())
    assert grads["off"].abs().max() > 0
    torch.testing.assert_close(grads["adapter_checkpoint"], grads["off"], atol=1e-6, rtol=1e-5)
    assert (grads["diffusers_default"] - grads["off"]).abs().max() > 1e-3


def test_sd_lora_export_loads_in_stock_diffusers_and_equals_the_one_step_student(sd_folder, tmp_path):
    from gendiv.pipelines import OneStepTextToImagePipeline

    den, _, text = load_teacher(str(sd_folder))
    shared = SharedLora(den, LoraSpec(rank=4, alpha=2))
    student = shared.view("student")
    perturb(student)
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.scheduler.set_timesteps(1)
    sigma_max = float(pipe.scheduler.sigmas[0])  # the one step's σ: the student's σ_init
    gen = LoraOneStepGenerator(student, sigma_init=sigma_max)
    shared.save_lora(tmp_path / "lora", "student", StableDiffusionPipeline)

    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    ours = OneStepTextToImagePipeline(student=gen, vae=text.vae, text_encoder=text.text_encoder,
                                      tokenizer=text.tokenizer)(prompt=["a cat", "dog"], latents=z, output_type="np")
    pipe.load_lora_weights(tmp_path / "lora")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt=["a cat", "dog"], num_inference_steps=1, guidance_scale=1.0, latents=z, output_type="np")
    before = StableDiffusionPipeline.from_pretrained(sd_folder)
    assert (abs(theirs.images - ours.images)).max() < 1e-4
    assert not (abs(theirs.images - before(prompt=["a cat", "dog"], num_inference_steps=1, guidance_scale=1.0,
                                           latents=z, output_type="np").images) < 1e-3).all()


def test_sd3_transformer_lora_export_equals_the_one_step_student(tmp_path):
    folder = tmp_path / "sd3"
    testing.tiny_sd3_pipeline().save_pretrained(folder)
    den, _, text = load_teacher(str(folder))
    shared = SharedLora(den, LoraSpec(rank=4, target_modules=["to_q", "to_k", "to_v", "add_q_proj"]))
    student = shared.view("student")
    perturb(student)
    gen = LoraOneStepGenerator(student, sigma_init=1e6)  # flow: t = σ/(1+σ) → 1, the pipeline's one step
    shared.save_lora(tmp_path / "lora", "student", StableDiffusion3Pipeline)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = gen(z, text.condition(["a cat", "dog"]))
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.load_lora_weights(tmp_path / "lora")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt=["a cat", "dog"], num_inference_steps=1, guidance_scale=1.0, latents=z,
                  output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
