"""What a forward returns beside the logits: the method's loss terms and token statistics.

The slots leave typed records in the token state as the blocks run (``dispatch.ActivationRate``,
``pruning.StageTokens``); :func:`collect_terms` turns one pass's records into :class:`LossTerms`, which
``VideoViT.forward(x, return_terms=True)`` returns and the trainer adds to the task loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossTerms:
    """What a training forward returns beside the logits (``model(x, return_terms=True)``).

    ``losses``: the method's weighted loss terms, ready to add (DyT's ``activation`` and ``distill``, AS-ViT's
    ``budget``); ``teacher``: the logits of DyT's full-token pass, which train on the task loss too
    (:meth:`with_task`); ``stats``: measured token use (``activation_rate``, ``kept_ratio``), detached.
    """

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def with_task(self, criterion: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every term to add to the task loss, the full-token pass's own task loss included."""
        if self.teacher is None:
            return dict(self.losses)
        return {**self.losses, "full_token": criterion(self.teacher.float())}


def collect_terms(records: tuple, logits: torch.Tensor, teacher: torch.Tensor | None,
                  distill_weight: float) -> LossTerms:
    """The pass's LossTerms from the loss records its slots left in the token state (each record class sums its
    own kind: ``name``, ``loss``, ``stats``) and, given DyT's full-token ``teacher`` logits, the distillation."""
    groups: dict[type, list] = {}
    for record in records:
        groups.setdefault(type(record), []).append(record)
    losses = {kind.name: kind.loss(items) for kind, items in groups.items()}
    stats = {k: v for kind, items in groups.items() for k, v in kind.stats(items).items()}
    if teacher is not None:
        losses["distill"] = distill_weight * F.kl_div(
            F.log_softmax(logits.float(), dim=-1), F.log_softmax(teacher.detach().float(), dim=-1), log_target=True,
            reduction="batchmean")
    return LossTerms(losses=losses, teacher=teacher, stats=stats)
