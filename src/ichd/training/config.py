"""Typed configuration of slice-CNN training (``ichd train cnn --config FILE``).

The YAML file mirrors :class:`CnnTrainConfig`; unknown keys and wrong types are :class:`ConfigError`\\ s. The
whole config is saved as ``config.yaml`` next to the checkpoints and inside every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ichd.data.augment import AugmentConfig
from ichd.errors import ConfigError


@dataclass
class ModelConfig:
    """Which slice CNN to train (a name from ``ichd models list``) and how to initialise it."""

    name: str = "efficientnet_lite0"
    pretrained: bool = True  # offline ImageNet weights (only models that ship them)
    weights: str | None = None  # user-supplied backbone weights file instead (e.g. ResNeXt-101 32x8d)
    dropout: float | None = None  # None = the model's default


@dataclass
class DataConfig:
    """Where the images and labels come from, and how patients are split into folds.

    ``cache`` is a folder written by ``ichd preprocess`` (relative paths: from the working directory).
    ``labels`` is a CT-ICH ``labels.csv``, an RSNA ``stage_2_train.csv`` or an ichd labels CSV; a relative
    path that does not exist from the working directory is looked up in the data folder (``$ICHD_DATA``).
    """

    cache: str = "cache/ctich-256"
    labels: str | list[str] = "ct-ich/labels.csv"  # one file, or one per data source (read_label_sources)
    sources: list[str] | None = None  # source names of the label files (default: each file's folder name)
    folds: int = 5
    fold_seed: int = 42
    num_workers: int = 1
    balanced_sampling: bool = False  # oversample slices with hemorrhage (ichd.data.sampling.training_sampler)
    positive_fraction: float = 0.5  # share of "any"-positive slices drawn when balanced_sampling is on
    source_share: dict[str, float] | None = None  # share of each epoch's draws per source (normalised)
    epoch_samples: int | None = None  # slices drawn per training epoch (default: the training set size)

    @property
    def label_files(self) -> list[str]:
        """The label file(s) as a list."""
        return [self.labels] if isinstance(self.labels, str) else list(self.labels)


@dataclass
class OptimConfig:
    """Adam with one learning rate per epoch (the seed: 1e-4, 1e-4, 2e-5); ``epochs = len(lr_per_epoch)``."""

    lr_per_epoch: list[float] = field(default_factory=lambda: [1e-4, 1e-4, 2e-5])
    batch_size: int = 32
    grad_accum: int = 1  # optimizer step every N batches (effective batch = batch_size * grad_accum)
    weight_decay: float = 0.0
    amp: bool = False  # mixed precision: float16 autocast on CUDA, bfloat16 on CPU
    channels_last: bool = True

    @property
    def epochs(self) -> int:
        return len(self.lr_per_epoch)


@dataclass
class CnnTrainConfig:
    """Everything that defines one slice-CNN training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # ichd.data.augment's (the seed's transforms)
    augment_enabled: bool = True  # false: train on the plain images
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 42
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads (None = torch's default)
    val_batch_size: int = 64
    val_every: int = 1  # validate after every N-th epoch (the final model is always validated)
    deterministic: bool = True
    out: str = "runs/cnn_ctich"
    scan_rule: Literal["max"] = "max"  # scan score = max over slices (for the scan-level validation AUC)

    def __post_init__(self) -> None:
        if not self.optim.lr_per_epoch or any(lr <= 0 for lr in self.optim.lr_per_epoch):
            raise ConfigError("optim.lr_per_epoch must list at least one positive learning rate")
        if self.optim.batch_size < 1 or self.optim.grad_accum < 1:
            raise ConfigError("optim.batch_size and optim.grad_accum must be >= 1")
        if self.data.folds < 2:
            raise ConfigError(f"data.folds must be >= 2, got {self.data.folds}")
        if self.data.num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        if self.val_every < 1:
            raise ConfigError(f"val_every must be >= 1, got {self.val_every}")
        if not self.data.label_files:
            raise ConfigError("data.labels must name at least one label file")
        if self.data.sources is not None and len(self.data.sources) != len(self.data.label_files):
            raise ConfigError(f"data.sources names {len(self.data.sources)} source(s) for "
                              f"{len(self.data.label_files)} label file(s)")
        if self.data.source_share is not None and (
                not self.data.source_share or any(v < 0 for v in self.data.source_share.values())
                or sum(self.data.source_share.values()) <= 0):
            raise ConfigError("data.source_share must map source names to non-negative shares with a positive sum")
        if self.data.epoch_samples is not None and self.data.epoch_samples < self.optim.batch_size:
            raise ConfigError(f"data.epoch_samples ({self.data.epoch_samples}) must be at least one batch "
                              f"({self.optim.batch_size})")


def load_cnn_config(path: str | Path, overrides: dict[str, object] | None = None) -> CnnTrainConfig:
    """Load a :class:`CnnTrainConfig` YAML file with dotted-key ``overrides``."""
    from ichd.config import load_config

    return load_config(CnnTrainConfig, path, overrides)
