"""One training loop for every ichd model: epochs, per-epoch learning rates, gradient accumulation, mixed
precision, channels_last, deterministic seeding, validation, and callbacks (checkpoints, metric logs).

The loop knows nothing about CT: batches are ``dict``\\ s with ``image`` and ``target`` tensors (other keys,
e.g. ``slice_id`` / ``scan_id``, are passed through to predictions), or ``(image, target, ...)`` tuples.
Resuming: :meth:`Trainer.state_dict` / :meth:`Trainer.load_state_dict` carry the optimizer, the epoch and the
metric history; every epoch re-seeds all random generators from ``(seed, epoch)``, so a run resumed after
epoch ``k`` continues exactly as the uninterrupted run would.

Data-parallel (``distributed``, under torchrun): the model is wrapped in DistributedDataParallel for training
(gradients averaged over ranks), while :attr:`Trainer.model` stays the plain module (predictions, checkpoints).
Training losses are averaged over ranks; validation over a loader sharded with
:class:`ichd.training.distributed.EvalShardSampler` is gathered back into one prediction set on every rank.
See :mod:`ichd.training.distributed`.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ichd.errors import IchdError
from ichd.training import distributed as dist_utils
from ichd.training.distributed import DistInfo, EvalShardSampler
from ichd.utils.logging import get_logger
from ichd.utils.progress import progress_bar

log = get_logger(__name__)


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with ``deterministic`` ask torch for deterministic kernels (warn-only)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded with ``seed`` (shuffling, augmentation, dropout)."""
    return int(seed) * 1000 + int(epoch)


class Callback:
    """Hooks called by :class:`Trainer`; override what you need. Under torchrun they run on every rank: write
    files only where ``trainer.dist.is_main``."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch (also when resuming)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After epoch ``epoch`` (0-based) with its train (``train/...``) and validation (``val/...``) metrics."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch."""


@dataclass
class Predictions:
    """Model outputs over a loader: probabilities, targets (when present) and pass-through metadata."""

    probs: np.ndarray  # (n, C) float32
    targets: np.ndarray | None  # (n, C) float32
    meta: dict[str, list[Any]] = field(default_factory=dict)
    seconds: float = 0.0


#: Batch keys that are training inputs besides image and target (segmentation masks), not pass-through metadata.
AUX_KEYS = ("mask", "has_mask")

#: A test-time view: a function from an image batch (B, C, H, W) to the transformed batch.
View = Callable[[torch.Tensor], torch.Tensor]


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, list[Any]]]:
    """``(image, target or None, metadata lists)`` of a dict or tuple batch (masks are not metadata)."""
    if isinstance(batch, dict):
        meta = {k: (v.tolist() if isinstance(v, torch.Tensor) else list(v)) for k, v in batch.items()
                if k not in ("image", "target", *AUX_KEYS)}
        return batch["image"], batch.get("target"), meta
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None), {}
    raise TypeError(f"cannot unpack a batch of type {type(batch).__name__}")


class Trainer:
    """Train ``model`` with ``loss_fn`` and Adam-style ``optimizer``, one learning rate per epoch.

    Args:
        model: the network (moved to ``device``; channels_last when asked).
        loss_fn: ``loss_fn(logits, targets) -> scalar``.
        optimizer: its learning rate is set from ``lr_per_epoch`` at the start of each epoch.
        lr_per_epoch: learning rates; their number is the number of epochs.
        device: a ``torch.device``.
        metrics_factory: builds a fresh metric accumulator (``update(probs, targets, scan_ids)`` /
            ``compute() -> dict``) for validation, e.g. :class:`ichd.evaluation.metrics.CumulativeMetrics`.
        grad_accum: optimizer step every ``grad_accum`` batches (losses are scaled by ``1/grad_accum``).
        amp: autocast (float16 + GradScaler on CUDA, bfloat16 on CPU).
        amp_dtype: the autocast type on CUDA: ``"float16"`` (default; with a GradScaler) or ``"bfloat16"`` (no
            scaler needed: bfloat16 has float32's exponent range). CPU autocast is always bfloat16.
        seed: base seed; epoch ``e`` re-seeds everything with :func:`epoch_seed`.
        loader_generator: the training DataLoader's ``generator``, re-seeded every epoch (shuffle order,
            worker seeds).
        reseed_fns: called with the epoch seed at the start of every epoch (e.g. an in-process augmentation's
            own generator).
        scan_ids: ``slice_id -> scan_id`` for scan-level validation metrics when batches carry only
            ``slice_id``.
        log_every: log a progress line every N optimizer steps (for log files; the bar updates each batch).
        desc: label of the progress bar and log lines (e.g. ``"fold 2"``).
        distributed: this process's place in a torchrun job (``None``: a single process). With more than one
            process the model is trained through DistributedDataParallel; ``loader_generator`` must then be
            seeded alike on every rank (it is: from ``seed``) and the training loader must shard its draws
            (:class:`ichd.training.distributed.ShardSampler`).
        sync_batchnorm: under DDP, replace BatchNorm by SyncBatchNorm (batch statistics over the global batch,
            as in one process; torch supports it on GPUs only).
        max_steps: stop training after this many optimizer steps in all (the remaining epochs are skipped; the
            last epoch run counts as the final one). ``None``: no cap.
        image_sizes: progressive resizing: the training image side of each epoch (one per learning rate);
            batches are resized (antialiased bilinear) when their side differs. Prediction keeps the input size.
        aux_loss: ``aux_loss(model, batch) -> scalar`` added to the training loss of every batch (e.g. a mask loss
            on outputs the model keeps from its forward pass); ``batch`` is the raw dict batch.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 optimizer: torch.optim.Optimizer, *, lr_per_epoch: Sequence[float], device: torch.device,
                 metrics_factory: Callable[[], Any] | None = None, grad_accum: int = 1, amp: bool = False,
                 channels_last: bool = True, seed: int = 42, deterministic: bool = True,
                 loader_generator: torch.Generator | None = None,
                 reseed_fns: Iterable[Callable[[int], None]] = (), scan_ids: dict[str, str] | None = None,
                 callbacks: Iterable[Callback] = (), log_every: int = 10, desc: str = "train",
                 distributed: DistInfo | None = None, sync_batchnorm: bool = False, max_steps: int | None = None,
                 image_sizes: Sequence[int] | None = None,
                 aux_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
                 amp_dtype: str = "float16") -> None:
        if amp_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be 'float16' or 'bfloat16', got {amp_dtype!r}")
        self.device = device
        self.channels_last = channels_last
        self.dist = distributed or dist_utils.SINGLE
        self.model = model.to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._ddp: nn.Module | None = None
        if self.dist.enabled:
            if dist_utils.has_batchnorm(self.model):
                if sync_batchnorm:
                    self.model = dist_utils.convert_sync_batchnorm(self.model)
                elif self.dist.is_main:
                    log.info("%s: BatchNorm statistics are taken per process (its share of the batch), not "
                             "over the global batch (SyncBatchNorm is off or unsupported on %s)", desc, device.type)
            self._ddp = dist_utils.wrap_model(self.model, device)
        self.loss_fn = loss_fn.to(device) if isinstance(loss_fn, nn.Module) else loss_fn
        self.optimizer = optimizer
        self.lr_per_epoch = [float(x) for x in lr_per_epoch]
        self.metrics_factory = metrics_factory
        self.grad_accum = max(1, int(grad_accum))
        self.amp = amp
        self.amp_dtype = amp_dtype
        self.seed = seed
        self.deterministic = deterministic
        self.loader_generator = loader_generator
        self.reseed_fns = list(reseed_fns)
        self.scan_ids = scan_ids
        self.callbacks = list(callbacks)
        self.log_every = max(1, int(log_every))
        self.desc = desc
        self.epoch = 0  # next epoch to run
        self.step = 0  # optimizer steps so far
        self.history: list[dict[str, float]] = []
        self.max_steps = max_steps
        if image_sizes is not None and len(image_sizes) != len(self.lr_per_epoch):
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for {len(self.lr_per_epoch)} epochs")
        self.image_sizes = None if image_sizes is None else [int(v) for v in image_sizes]
        self.aux_loss = aux_loss
        use_scaler = amp and device.type == "cuda" and amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    @property
    def epochs(self) -> int:
        return len(self.lr_per_epoch)

    @property
    def train_module(self) -> nn.Module:
        """The module training batches go through: the DDP wrapper under torchrun, else :attr:`model`."""
        return self._ddp if self._ddp is not None else self.model

    # -- state for resuming ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scaler, counters and metric history (the model's weights are saved separately)."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "trainer": {"epoch": self.epoch, "step": self.step, "history": list(self.history),
                            "lr_per_epoch": list(self.lr_per_epoch)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the model's weights must already be loaded)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        t = state["trainer"]
        self.epoch, self.step, self.history = int(t["epoch"]), int(t["step"]), list(t["history"])

    # -- helpers -----------------------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" and self.amp_dtype == "float16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @property
    def budget_spent(self) -> bool:
        """Whether :attr:`max_steps` optimizer steps have been taken."""
        return self.max_steps is not None and self.step >= self.max_steps

    def _resize(self, x: torch.Tensor, epoch: int) -> torch.Tensor:
        """The batch at epoch ``epoch``'s training size (progressive resizing), else unchanged."""
        if self.image_sizes is None or x.shape[-1] == self.image_sizes[epoch] == x.shape[-2]:
            return x
        from torch.nn import functional as F

        size = self.image_sizes[epoch]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _seed_epoch(self, epoch: int) -> None:
        s = epoch_seed(self.seed, epoch)
        own = dist_utils.rank_seed(s, self.dist.rank)  # dropout / augmentation: independent per rank
        seed_everything(own, deterministic=self.deterministic)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(s)  # sampling order: identical on every rank (each keeps a shard)
        for fn in self.reseed_fns:
            fn(own)

    # -- loops -------------------------------------------------------------------------------------------------
    def train_epoch(self, loader: Iterable[Any], epoch: int) -> dict[str, float]:
        """One pass over ``loader`` at ``lr_per_epoch[epoch]``; returns ``train/loss`` and ``train/img_per_s``."""
        self._seed_epoch(epoch)
        lr = self.lr_per_epoch[epoch]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        module = self.train_module
        module.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = progress_bar(desc=f"{self.desc} epoch {epoch + 1}/{self.epochs}", total=total, unit="batch")
        loss_sum, n_seen, t0 = 0.0, 0, time.perf_counter()
        ema: float | None = None
        pending = 0
        try:
            for i, batch in enumerate(loader):
                if self.budget_spent:
                    break
                x, y, _ = split_batch(batch)
                if y is None:
                    raise IchdError("training batches must carry targets")
                x, y = self._to_device(self._resize(x, epoch)), y.to(self.device, non_blocking=True).float()
                # Under DDP, gradients are averaged over ranks only in the backward pass before an optimizer step.
                steps_now = pending + 1 == self.grad_accum or total is None or i + 1 == total
                sync = self._ddp.no_sync() if (self._ddp is not None and not steps_now) else contextlib.nullcontext()
                with sync:
                    with self._autocast():
                        logits = module(x)
                    loss = self.loss_fn(logits.float(), y)
                    if self.aux_loss is not None:
                        loss = loss + self.aux_loss(self.model, batch)
                    if not torch.isfinite(loss):
                        raise IchdError(f"{self.desc}: loss became {loss.item()} at epoch {epoch + 1}, "
                                        f"batch {i + 1}", hint="lower the learning rate or disable amp")
                    self.scaler.scale(loss / self.grad_accum).backward()
                pending += 1
                if pending == self.grad_accum or (total is not None and i + 1 == total):
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    pending = 0
                    self.step += 1
                b = int(x.shape[0])
                value = float(loss.detach())
                loss_sum += value * b
                n_seen += b
                ema = value if ema is None else 0.9 * ema + 0.1 * value
                ips = n_seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{ema:.4f}", img_s=f"{ips:.1f}", refresh=False)
                bar.update(1)
                if (i + 1) % self.log_every == 0:
                    log.info("%s epoch %d/%d batch %d/%s loss %.4f (running %.4f) %.1f img/s", self.desc,
                             epoch + 1, self.epochs, i + 1, total if total is not None else "?", value, ema, ips)
            if pending:  # a loader without len: flush the last partial accumulation
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        if self.dist.enabled:  # the epoch over all ranks: mean loss over every slice drawn, total throughput
            loss_sum, n_total = dist_utils.all_reduce_sum([loss_sum, n_seen])
            n_seen = int(n_total)
            seconds = dist_utils.all_reduce_max(seconds)
        return {"train/loss": loss_sum / max(n_seen, 1), "train/img_per_s": n_seen / max(seconds, 1e-9),
                "train/seconds": seconds, "train/n": float(n_seen), "lr": lr}

    @torch.no_grad()
    def predict(self, loader: Iterable[Any], *, desc: str = "predict", views: Sequence[View] = ()) -> Predictions:
        """Sigmoid probabilities over ``loader`` in eval mode, with targets and metadata when present. With
        ``views`` (test-time augmentation) each batch is predicted once per view and the probabilities averaged."""
        self.model.eval()
        probs: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        meta: dict[str, list[Any]] = {}
        total = len(loader) if hasattr(loader, "__len__") else None
        bar = progress_bar(desc=f"{self.desc} {desc}", total=total, unit="batch")
        t0 = time.perf_counter()
        try:
            for batch in loader:
                x, y, m = split_batch(batch)
                p_sum = None
                for view in views or (None,):
                    with self._autocast():
                        logits = self.model(self._to_device(x if view is None else view(x)))
                    p = torch.sigmoid(logits.float())
                    p_sum = p if p_sum is None else p_sum + p
                probs.append((p_sum / max(len(views), 1)).cpu().numpy())
                if y is not None:
                    targets.append(y.float().cpu().numpy())
                for k, v in m.items():
                    meta.setdefault(k, []).extend(v)
                bar.update(1)
        finally:
            bar.close()
        p = np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)
        t = np.concatenate(targets) if targets and len(targets) == len(probs) else None
        return Predictions(probs=p.astype(np.float32), targets=t, meta=meta, seconds=time.perf_counter() - t0)

    def validate(self, loader: Iterable[Any], *, views: Sequence[View] = ()) -> tuple[dict[str, float], Predictions]:
        """Predict ``loader`` (averaged over test-time ``views`` when given) and compute ``val/...`` metrics (with
        scan-level metrics when batches carry ``scan_id``). Under DDP a loader sharded with
        :class:`EvalShardSampler` is predicted in parts and gathered (every rank gets all predictions in loader
        order); an unsharded loader is predicted whole on every rank."""
        preds = self.predict(loader, desc="validate", views=views)
        if self.dist.enabled and isinstance(getattr(loader, "sampler", None), EvalShardSampler):
            preds = _gather_predictions(preds)
        metrics: dict[str, float] = {"val/seconds": preds.seconds}
        if self.metrics_factory is not None and preds.targets is not None:
            acc = self.metrics_factory()
            scans = preds.meta.get("scan_id")
            if scans is None and self.scan_ids is not None and "slice_id" in preds.meta:
                scans = [self.scan_ids[str(s)] for s in preds.meta["slice_id"]]
            acc.update(preds.probs, preds.targets, scans)
            metrics.update({f"val/{k}": float(v) for k, v in acc.compute().items()})
        return metrics, preds

    def fit(self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None = None, *, val_every: int = 1,
            skip_last_validation: bool = False) -> list[dict[str, float]]:
        """Run the remaining epochs (from :attr:`epoch`), validating after every ``val_every``-th epoch and the
        last one (unless ``skip_last_validation``: the caller validates the final model itself, e.g. to write
        out-of-fold predictions, and a second pass would only repeat it); returns the metric history."""
        if val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {val_every}")
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.epoch < self.epochs:
            epoch = self.epoch
            metrics = {"epoch": float(epoch + 1), **self.train_epoch(train_loader, epoch)}
            stop = self.budget_spent and epoch + 1 < self.epochs
            if stop:
                log.info("%s: max_steps=%d reached in epoch %d; the remaining epochs are skipped", self.desc,
                         self.max_steps, epoch + 1)
                metrics["stopped_at_max_steps"] = 1.0
            last = epoch + 1 == self.epochs or stop
            due = (epoch + 1) % val_every == 0 or last
            if val_loader is not None and due and not (last and skip_last_validation):
                val_metrics, _ = self.validate(val_loader)
                metrics.update(val_metrics)
            self.epoch = self.epochs if stop else epoch + 1
            self.history.append(metrics)
            log.info("%s epoch %d/%d: %s", self.desc, epoch + 1, self.epochs, _summary(metrics))
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, metrics)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history


def _gather_predictions(part: Predictions) -> Predictions:
    """Every rank's :class:`EvalShardSampler` share of a prediction run, back in loader order."""
    parts = dist_utils.all_gather_objects(part)
    probs = dist_utils.interleave([p.probs for p in parts])
    targets = None
    if all(p.targets is not None for p in parts if len(p.probs)):
        targets = dist_utils.interleave([p.targets if p.targets is not None else p.probs for p in parts])
    keys = set(parts[0].meta)
    meta = {k: dist_utils.interleave([p.meta.get(k, []) for p in parts]) for k in keys}
    return Predictions(probs=probs, targets=targets, meta=meta, seconds=max(p.seconds for p in parts))


def _summary(metrics: dict[str, float]) -> str:
    keys = ("train/loss", "train/img_per_s", "val/weighted_log_loss", "val/auc/any", "val/mean_auc",
            "val/scan/auc/any")
    parts = []
    for k in keys:
        if k in metrics and not (isinstance(metrics[k], float) and math.isnan(metrics[k])):
            parts.append(f"{k}={metrics[k]:.4f}")
    return " ".join(parts)
