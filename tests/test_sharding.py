"""FSDP2 sharding of denoisers on 2 CPU processes with gloo (issue 22): a sharded network and a sharded base with
LoRA adapters give the unsharded outputs and gradients (each process holds half of every sharded parameter)."""
import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import free_port


def _worker(rank: int, world: int, port: int, results):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = _compare(rank)
    finally:
        dist.destroy_process_group()


def _denoiser():
    from gendiv.models import UNetDenoiser
    from gendiv.testing import tiny_text_to_image_pipeline

    pipe = tiny_text_to_image_pipeline()
    return UNetDenoiser.from_unet(pipe.unet, scheduler=pipe.scheduler, text_embeds_shape=[16, 32])


def _grads(params):
    return torch.cat([(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).flatten()
                      for p in params])


def _compare(rank: int) -> dict:
    from gendiv.condition import Condition
    from gendiv.models.lora import LoraSpec, SharedLora
    from gendiv.models.sharding import shard_denoiser

    g = torch.Generator().manual_seed(1)
    x, sigma = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([0.5, 2.0])
    cond = Condition(text_embeds=torch.randn(2, 16, 32, generator=g))
    errors = {}
    sharded, reference = shard_denoiser(_denoiser()), _denoiser()
    local = sum(p.to_local().numel() for p in sharded.parameters())
    errors["held_fraction"] = local / sum(p.numel() for p in reference.parameters())
    out, ref = sharded(x, sigma, cond), reference(x, sigma, cond)
    (out * x).sum().backward()
    (ref * x).sum().backward()
    errors["forward"] = (out - ref).abs().max().item()
    errors["grad"] = (_grads(sharded.parameters()) - _grads(reference.parameters())).abs().max().item()

    views = {}
    for shard in (True, False):  # one base, student and fake adapters; sharded after the adapters exist
        torch.manual_seed(0)
        shared = SharedLora(_denoiser(), LoraSpec(rank=4))
        student, fake = shared.view("student"), shared.view("fake")
        with torch.no_grad():  # trained-looking adapters (B = 0 at initialisation)
            for i, p in enumerate([*student.parameters(), *fake.parameters()]):
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        if shard:
            shared.shard()
        out = student(x, sigma, cond)
        with torch.no_grad():
            target = shared.view(None)(out, sigma, cond) - fake(out, sigma, cond)
        (out * target).sum().backward()
        views[shard] = (out.detach(), _grads(student.parameters()))
    errors["lora_forward"] = (views[True][0] - views[False][0]).abs().max().item()
    errors["lora_grad"] = (views[True][1] - views[False][1]).abs().max().item()
    return errors


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_equals_the_unsharded_networks():
    import torch.distributed as dist

    if not dist.is_gloo_available():
        pytest.skip("this PyTorch build has no gloo backend")
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), results), nprocs=2)
    for rank in (0, 1):
        r = results[rank]
        assert 0.4 < r["held_fraction"] < 0.6  # each process holds about half of the weights
        for key in ("forward", "grad", "lora_forward", "lora_grad"):
            assert r[key] < 1e-5, (rank, key, r[key])
