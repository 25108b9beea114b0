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


def test_missing_labels_are_masked_like_the_metric() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(32, 6, generator=g, dtype=torch.float64)
    targets = (torch.rand(32, 6, generator=g) < 0.3).double()
    targets[3] = float("nan")  # a slice with no labels
    targets[7, 2] = float("nan")  # one missing subtype
    loss = WeightedBCEWithLogits()(logits, targets)
    metric = weighted_log_loss(targets.numpy(), torch.sigmoid(logits).numpy())
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx(metric, rel=1e-6)
    # masking = dropping the unlabelled row entirely
    keep = [i for i in range(32) if i != 3]
    full_row_dropped = weighted_log_loss(targets.numpy()[keep], torch.sigmoid(logits).numpy()[keep])
    t2 = targets.clone()
    t2[7, 2] = 0.0
    loss_no_row = WeightedBCEWithLogits()(logits[keep], t2[keep])
    assert float(loss) != pytest.approx(float(loss_no_row))  # the NaN subtype cell was not read as 0
    assert metric == pytest.approx(full_row_dropped, rel=1e-9)
    # gradients stay finite and the masked row gets none
    lg = logits.clone().requires_grad_(True)
    WeightedBCEWithLogits()(lg, targets).backward()
    assert torch.isfinite(lg.grad).all() and float(lg.grad[3].abs().sum()) == 0.0


def test_batch_with_no_known_label_gives_zero_loss() -> None:
    logits = torch.randn(4, 6, requires_grad=True)
    loss = WeightedBCEWithLogits()(logits, torch.full((4, 6), float("nan")))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
