"""A small digit classifier for the Inception Score of digit generators.

The Inception Score needs class probabilities p(y|x). The offline FID Inception weights gendiv uses hold no
classifier, and ImageNet classes say little about digits anyway, so digit studies score IS with a classifier of the
digits themselves, as MNIST papers do: IS = exp E KL(p(y|x) ‖ p(y)) is then at most the number of classes (10), reached
by confident, class-balanced samples, and falls with blurry digits (p(y|x) spread) or dropped classes (p(y) uneven).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class DigitClassifier(ModelMixin, ConfigMixin):
    """Three 3×3 convolutions (the last two stride 2), average pooling to 4×4 (where the strokes are matters), a
    linear layer: logits of [N, C, H, W] images in [-1, 1], any size."""

    @register_to_config
    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: tuple = (32, 64, 128)):
        super().__init__()
        widths = [in_channels, *channels]
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(a, b, 3, stride=1 if i == 0 else 2, padding=1)
                                         for i, (a, b) in enumerate(zip(widths, widths[1:])))
        self.head = torch.nn.Linear(widths[-1] * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.silu(conv(x))
        return self.head(F.adaptive_avg_pool2d(x, 4).flatten(1))


def train_digit_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int = 1500, batch_size: int = 128,
                           lr: float = 2e-3, max_shift: int = 2, seed: int = 0) -> DigitClassifier:
    """Adam on cross-entropy with random shifts of up to ``max_shift`` pixels (generated digits are not centred as
    exactly as the real ones); ``images`` [N, C, H, W] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier(images.shape[1], int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=g).tolist()
        x = torch.roll(images[idx], (dy, dx), (2, 3))
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def classifier_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """float64 logits [N, classes] of images in [-1, 1], in batches."""
    return torch.cat([model(x) for x in images.split(batch_size)]).double().numpy()
