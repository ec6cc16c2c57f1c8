"""CFG-aware training (issue 24): its loss against the exact class-conditional mixture (the optimum in closed form),
gradients into both branches, and the objective from the command line."""
import pytest
import torch
from torch import nn

from gendiv import GenDivPipeline, MLPDenoiser
from gendiv.condition import Condition
from gendiv.guidance import ClassifierFreeGuidedDenoiser
from gendiv.objectives import denoising_loss
from gendiv.objectives.cfg_aware import cfg_aware_loss
from gendiv.toy import AnalyticDenoiser, get_distribution

DIST = get_distribution("conditional2d")
EXACT = AnalyticDenoiser(DIST)


class ClaimedOptimum(nn.Module):
    """D(x|∅) = E[x₀|x], D(x|c) = D(x|∅) + (E[x₀|x,c] − D(x|∅))/w: the minimiser the docstring derives."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    @property
    def config(self):
        return EXACT.config

    def forward(self, x, sigma, cond=None, return_features=False):
        uncond, exact = EXACT(x, sigma, cond.with_null()), EXACT(x, sigma, cond)
        labelled = uncond + (exact - uncond) / self.scale
        dropped = torch.zeros(x.shape[0], dtype=torch.bool) if cond.drop is None else cond.drop
        return torch.where(dropped[:, None], uncond, labelled)


def labelled_batch(n=512, seed=0, drop_prob=0.2):
    g = torch.Generator().manual_seed(seed)
    labels = DIST.sample_labels(n, g)
    x0 = DIST.sample(n, g, class_labels=labels).double()
    return x0, Condition(class_labels=labels, drop=torch.rand(n, generator=g) < drop_prob)


@pytest.mark.parametrize("w", [1.0, 2.0, 4.0])
def test_cfg_aware_loss_of_the_claimed_optimum_is_the_exact_conditional_loss(w):
    """The CFG combination at w of the claimed optimum is the exact conditional denoiser (labelled samples) and the
    exact marginal one (dropped samples): the loss equals the plain loss of the exact model, draw for draw."""
    x0, cond = labelled_batch()
    got = cfg_aware_loss(ClaimedOptimum(w), x0, cond, scale=w, generator=torch.Generator().manual_seed(1))
    want = denoising_loss(EXACT, x0, cond, generator=torch.Generator().manual_seed(1))
    # two different float32 computations of the same value: equal to round-off (CPU kernels may sum in another order)
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-8)
    guided = ClassifierFreeGuidedDenoiser(ClaimedOptimum(w), w)
    x, sig = x0 + 0.3 * torch.randn_like(x0), torch.full((512,), 0.3, dtype=torch.float64)
    labelled = Condition(class_labels=cond.class_labels)
    torch.testing.assert_close(guided(x, sig, labelled), EXACT(x, sig, labelled))  # sampling at s = w: the data


def test_weight_mixes_with_the_plain_conditional_loss_and_both_branches_train():
    x0, cond = labelled_batch(n=64)
    model = ClaimedOptimum(2.0)
    plain = denoising_loss(model, x0, cond, generator=torch.Generator().manual_seed(2))
    combined = cfg_aware_loss(model, x0, cond, scale=2.0, generator=torch.Generator().manual_seed(2))
    mixed = cfg_aware_loss(model, x0, cond, scale=2.0, weight=0.25, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(mixed, 0.25 * combined + 0.75 * plain)
    torch.manual_seed(0)
    net = MLPDenoiser(dim=2, hidden=16, depth=1, num_classes=4)
    captured = []
    net.class_embed.weight.register_hook(lambda g: captured.append(g.clone()))
    cfg_aware_loss(net, x0.float(), cond, scale=3.0, generator=torch.Generator().manual_seed(3)).backward()
    assert captured[0][:4].abs().sum() > 0 and captured[0][4].abs().sum() > 0  # class rows and the null row
    with pytest.raises(ValueError, match=r"cfg_aware.scale must be ≥ 1"):
        cfg_aware_loss(net, x0.float(), cond, scale=0.5)
    with pytest.raises(ValueError, match="needs class labels"):
        cfg_aware_loss(net, x0.float(), None)


def test_cfg_aware_objective_from_the_command_line(tmp_path):
    from gendiv.cli import main
    from gendiv.training.config import ConfigError

    main(["train", "objective=cfg_aware", "data.source=toy:conditional2d", f"run.output_dir={tmp_path / 'run'}",
          "run.steps=4", "run.progress=false", "eval.num_samples=32", "eval.num_steps=2", "cfg_aware.scale=3"])
    den = GenDivPipeline.from_pretrained(str(tmp_path / "run" / "pipeline")).denoiser
    assert den.config.num_classes == 4
    with pytest.raises((ConfigError, SystemExit)):
        main(["train", "objective=cfg_aware", "data.source=toy:conditional2d", f"run.output_dir={tmp_path / 'bad'}",
              "run.steps=1", "cfg_aware.scale=0.5"])
