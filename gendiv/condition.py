"""The condition a denoiser sees: class labels or prompt embeddings with an explicit null flag, and named scalars
(β, α, ...)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Condition:
    """Per-sample conditioning, batched along dim 0.

    ``class_labels``: LongTensor [B] in [0, num_classes). ``drop``: BoolTensor [B], True where the sample uses the
    null (unconditional) class; the denoiser maps it to its reserved null index, the same in training and sampling.
    ``scalars``: name → FloatTensor [B] (GFT's β, SMT's α, ...). ``text_embeds``: FloatTensor [B, L, D], the text
    encoder's prompt embeddings (a UNet2DConditionModel's ``encoder_hidden_states``); where ``drop`` is set the
    denoiser uses its stored null-prompt embedding instead, as it does the null class for labels.
    """

    class_labels: torch.Tensor | None = None
    drop: torch.Tensor | None = None
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)
    text_embeds: torch.Tensor | None = None

    def _tensors(self):
        return (self.class_labels, self.drop, self.text_embeds, *self.scalars.values())

    def batch_size(self) -> int | None:
        for t in self._tensors():
            if t is not None:
                return t.shape[0]
        return None

    def _map(self, fn) -> "Condition":
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        return Condition(opt(self.class_labels), opt(self.drop), {k: fn(v) for k, v in self.scalars.items()},
                         opt(self.text_embeds))

    def to(self, device) -> "Condition":
        return self._map(lambda t: t.to(device))

    def index(self, idx) -> "Condition":
        return self._map(lambda t: t[idx])

    def with_null(self) -> "Condition":
        """The same batch with every sample marked unconditional (for guidance's negative pass)."""
        b = self.batch_size()
        if b is None:
            return self
        ref = next(t for t in self._tensors() if t is not None)
        return Condition(self.class_labels, torch.ones(b, dtype=torch.bool, device=ref.device), dict(self.scalars),
                         self.text_embeds)

    @staticmethod
    def cat(conds: list["Condition"]) -> "Condition":
        def cat_opt(ts):
            if all(t is None for t in ts):
                return None
            if any(t is None for t in ts):
                raise ValueError("cannot concatenate conditions where only some carry this field")
            return torch.cat(ts)

        names = set(conds[0].scalars)
        if any(set(c.scalars) != names for c in conds):
            raise ValueError("cannot concatenate conditions with different scalar names")
        drops = [c.drop if c.drop is not None or c.batch_size() is None else
                 torch.zeros(c.batch_size(), dtype=torch.bool, device=next(t for t in c._tensors() if t is not None).device)
                 for c in conds]
        return Condition(cat_opt([c.class_labels for c in conds]), cat_opt(drops) if any(c.drop is not None for c in conds) else None,
                         {k: torch.cat([c.scalars[k] for c in conds]) for k in names}, cat_opt([c.text_embeds for c in conds]))


def as_condition(cond=None, class_labels=None) -> Condition | None:
    """Accept a Condition, a LongTensor of labels, or None."""
    if cond is None and class_labels is None:
        return None
    if isinstance(cond, Condition):
        return cond
    if cond is not None:
        class_labels = cond
    return Condition(class_labels=torch.as_tensor(class_labels).long())


# Guidance-free (GFT) and guidance-distilled models take the guidance scale as an input, in diffusers' convention
# (LCM / StableDiffusionPipeline with time_cond_proj_dim): the scalar is w = s − 1 = 1/β − 1.
GUIDANCE_SCALAR = "guidance"


def with_guidance_scale(cond: Condition | None, guidance_scale, batch: int, device) -> Condition:
    """``cond`` plus the scalar w = s − 1 that a guidance-free model reads (s: float or [B])."""
    w = (torch.as_tensor(guidance_scale, dtype=torch.float32, device=device) - 1).expand(batch).clone()
    if cond is None:
        return Condition(scalars={GUIDANCE_SCALAR: w})
    return Condition(cond.class_labels, cond.drop, {**cond.scalars, GUIDANCE_SCALAR: w}, cond.text_embeds)
