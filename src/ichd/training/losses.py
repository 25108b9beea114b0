"""Training loss = the evaluation metric: the RSNA 2019 weighted multi-label log loss, on logits.

:class:`WeightedBCEWithLogits` computes exactly :func:`ichd.evaluation.metrics.weighted_log_loss` (per-class
mean binary cross-entropy, weighted by :data:`ichd.constants.LABEL_WEIGHTS`, ``any`` = 2, subtypes = 1,
divided by the sum of the weights), but from logits with ``binary_cross_entropy_with_logits`` for numerical
stability. The metric clips probabilities to ``[1e-15, 1 - 1e-15]``; the loss does not need to, so the two
agree to floating-point precision whenever no probability is within 1e-15 of 0 or 1 (tested).

Missing labels (``NaN`` targets, e.g. the three unlabelled rsna-series slices) are masked out of the loss the
same way :func:`~ichd.evaluation.metrics.weighted_log_loss` masks them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ichd.constants import LABEL_WEIGHTS


class WeightedBCEWithLogits(nn.Module):
    """``sum_c w_c * mean_i BCE(logits[i, c], y[i, c]) / sum_c w_c`` (the RSNA weighted log loss); ``NaN``
    targets are masked (per-class means over known rows; classes with none drop out of the weighted sum)."""

    def __init__(self, weights: Sequence[float] = LABEL_WEIGHTS) -> None:
        super().__init__()
        w = torch.as_tensor(list(weights), dtype=torch.float32)
        if w.ndim != 1 or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"class weights must be non-negative with a positive sum, got {list(weights)}")
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape or logits.shape[-1] != self.weights.shape[0]:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be "
                             f"(B, {self.weights.shape[0]})")
        targets = targets.float()
        known = ~torch.isnan(targets)
        if bool(known.all()):
            per_elem = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
            return (per_elem.mean(dim=0) * self.weights).sum()
        # Missing labels (NaN) are masked: each class is averaged over its known rows, and classes without any
        # known row in the batch drop out, the weights of the others renormalised (as the metric does).
        per_elem = F.binary_cross_entropy_with_logits(logits.float(), torch.where(known, targets, 0.0),
                                                      reduction="none") * known
        count = known.sum(dim=0)
        per_class = per_elem.sum(dim=0) / count.clamp(min=1)
        w = self.weights * (count > 0)
        if not bool(w.sum() > 0):
            return logits.sum() * 0.0  # nothing known in this batch: a zero loss that keeps the graph
        return (per_class * w).sum() / w.sum()
