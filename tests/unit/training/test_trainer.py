"""Trainer: learning, per-epoch learning rates, gradient accumulation, exact resume, validation metrics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ichd.evaluation.metrics import CumulativeMetrics
from ichd.training.losses import WeightedBCEWithLogits
from ichd.training.trainer import Callback, Trainer


class Toy(Dataset):
    """Images whose mean brightness decides the labels; every item carries a slice id."""

    def __init__(self, n: int = 48, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, 8, 8, generator=g)
        level = self.x.mean(dim=(1, 2, 3))
        self.y = (level[:, None] > torch.linspace(0.45, 0.55, 6)[None, :]).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "target": self.y[i], "slice_id": f"s{i:03d}"}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Dropout(0.1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 6))


def make_trainer(model: nn.Module, lrs=(1e-2, 1e-2, 1e-3), **kw) -> tuple[Trainer, DataLoader]:
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(Toy(), batch_size=8, shuffle=True, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lrs[0])
    trainer = Trainer(model, WeightedBCEWithLogits(), opt, lr_per_epoch=lrs, device=torch.device("cpu"),
                      metrics_factory=CumulativeMetrics, loader_generator=gen, channels_last=False, seed=7, **kw)
    return trainer, loader


def test_fit_learns_and_sets_lr_per_epoch() -> None:
    trainer, loader = make_trainer(make_model())
    seen_lr = []

    class Spy(Callback):
        def on_epoch_end(self, tr, epoch, metrics):
            seen_lr.append(tr.optimizer.param_groups[0]["lr"])

    trainer.callbacks.append(Spy())
    before, _ = trainer.validate(loader)
    history = trainer.fit(loader, loader)
    assert [h["lr"] for h in history] == [1e-2, 1e-2, 1e-3] == seen_lr
    assert history[-1]["val/weighted_log_loss"] < before["val/weighted_log_loss"]
    assert trainer.epoch == 3 and trainer.step == 3 * 6
    assert history[-1]["train/img_per_s"] > 0 and history[-1]["val/n"] == 48


def test_resume_equals_uninterrupted() -> None:
    straight, loader = make_trainer(make_model())
    straight.fit(loader)

    first, loader1 = make_trainer(make_model(), lrs=(1e-2, 1e-2, 1e-3))
    first.lr_per_epoch = [1e-2]  # stop after epoch 1 as if killed
    first.fit(loader1)
    state = copy.deepcopy(first.state_dict())
    weights = copy.deepcopy(first.model.state_dict())

    resumed, loader2 = make_trainer(make_model(seed=123))  # fresh process: other init, same config
    resumed.model.load_state_dict(weights)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    resumed.fit(loader2)
    for k, v in straight.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6), k


def test_grad_accumulation_matches_big_batch() -> None:
    data = Toy(16)
    x, y = data.x, data.y
    loss_fn = WeightedBCEWithLogits()
    big = nn.Linear(3, 6)
    small = copy.deepcopy(big)

    def head(m):
        return lambda t: m(t.mean(dim=(2, 3)))

    opt_big = torch.optim.SGD(big.parameters(), lr=0.1)
    loss_fn(head(big)(x), y).backward()
    opt_big.step()

    class Wrap(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            return self.m(t.mean(dim=(2, 3)))

    wrapped = Wrap(small)
    loader = DataLoader(data, batch_size=8, shuffle=False)
    tr = Trainer(wrapped, loss_fn, torch.optim.SGD(wrapped.parameters(), lr=0.1), lr_per_epoch=[0.1],
                 device=torch.device("cpu"), grad_accum=2, channels_last=False)
    tr.train_epoch(loader, 0)
    assert tr.step == 1
    assert torch.allclose(big.weight, small.weight, atol=1e-6)


def test_scan_level_metrics_from_lookup() -> None:
    trainer, loader = make_trainer(make_model(), scan_ids={f"s{i:03d}": f"scan{i // 4}" for i in range(48)})
    metrics, preds = trainer.validate(loader)
    assert preds.probs.shape == (48, 6) and sorted(preds.meta["slice_id"]) == [f"s{i:03d}" for i in range(48)]
    assert metrics["val/scan/n"] == 12 and "val/scan/auc/any" in metrics


def test_non_finite_loss_is_reported() -> None:
    model = make_model()
    with torch.no_grad():
        model[4].bias.fill_(float("nan"))
    trainer, loader = make_trainer(model)
    from ichd.errors import IchdError

    with pytest.raises(IchdError, match="loss became nan"):
        trainer.train_epoch(loader, 0)


def test_amp_on_cpu_uses_bfloat16_and_trains() -> None:
    trainer, loader = make_trainer(make_model(), lrs=(1e-2,), amp=True)
    seen = []
    trainer.model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    history = trainer.fit(loader, loader)
    assert seen and seen[0] == torch.bfloat16
    assert torch.isfinite(torch.tensor(history[-1]["val/weighted_log_loss"]))


def test_amp_dtype_bfloat16_needs_no_scaler_and_bad_types_are_refused() -> None:
    trainer, loader = make_trainer(make_model(), lrs=(1e-2,), amp=True, amp_dtype="bfloat16")
    assert not trainer.scaler.is_enabled()
    with trainer._autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    trainer.fit(loader)
    assert torch.isfinite(torch.tensor(trainer.history[-1]["train/loss"]))
    with pytest.raises(ValueError, match="amp_dtype"):
        make_trainer(make_model(), amp=True, amp_dtype="float8")
