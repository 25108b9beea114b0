"""The training loss equals the evaluation metric (RSNA weighted log loss)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichd.constants import LABEL_WEIGHTS
from ichd.evaluation.metrics import weighted_log_loss
from ichd.training.losses import WeightedBCEWithLogits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_equals_metric(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(64, 6, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(64, 6, generator=g) < 0.3).double()
    loss = float(WeightedBCEWithLogits()(logits, targets))
    metric = weighted_log_loss(targets.numpy(), torch.sigmoid(logits).numpy())
    assert loss == pytest.approx(metric, rel=1e-6, abs=1e-7)


def test_any_counts_twice() -> None:
    y = torch.zeros(4, 6)
    only_any = torch.full((4, 6), -20.0)
    only_any[:, 0] = 2.0  # error only on "any"
    only_sdh = torch.full((4, 6), -20.0)
    only_sdh[:, 5] = 2.0  # the same error only on "subdural"
    loss = WeightedBCEWithLogits()
    assert float(loss(only_any, y)) == pytest.approx(2 * float(loss(only_sdh, y)), rel=1e-4)
    assert sum(LABEL_WEIGHTS) == 7.0


def test_custom_weights_and_shape_errors() -> None:
    logits = torch.randn(5, 6)
    y = (torch.rand(5, 6) > 0.5).float()
    w = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    expected = weighted_log_loss(y.numpy(), torch.sigmoid(logits).numpy(), weights=w)
    assert float(WeightedBCEWithLogits(w)(logits, y)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="must both be"):
        WeightedBCEWithLogits()(torch.randn(5, 5), torch.zeros(5, 5))
    with pytest.raises(ValueError, match="non-negative"):
        WeightedBCEWithLogits((-1.0, 1, 1, 1, 1, 1))


def test_stable_for_extreme_logits() -> None:
    logits = torch.tensor([[80.0, -80, 0, 0, 0, 0]])
    y = torch.tensor([[1.0, 0, 1, 0, 1, 0]])
    loss = float(WeightedBCEWithLogits()(logits, y))
    assert np.isfinite(loss) and loss == pytest.approx(4 * np.log(2) / 7, rel=1e-5)
