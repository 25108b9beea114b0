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
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept fixed (e.g. "backbone.features.0.")


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
    #: patient_id,fold CSV to take the folds from (e.g. benchmarks/results/cnn_multi_256/folds.csv, the default
    #: model's split) instead of computing them; its fold numbers must be 0..folds-1.
    folds_file: str | None = None
    #: Mask folders (ichd.data.masks; relative paths as for labels) for mask-supervised models (RADnet).
    masks: list[str] | None = None

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
    amp: bool = False  # mixed precision: float16 autocast on CUDA (amp_dtype), bfloat16 on CPU
    amp_dtype: Literal["float16", "bfloat16"] = "float16"  # CUDA autocast type; bfloat16 needs no GradScaler
    channels_last: bool = True
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9  # SGD only
    #: Progressive resizing: training image side per epoch (same length as lr_per_epoch; the last must be the
    #: cache's size, at which the model is validated and used). None: the cache's size throughout.
    image_size_per_epoch: list[int] | None = None
    max_steps: int | None = None  # stop after this many optimizer steps in all (quick checks); None = no cap

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
    #: "all": the six labels (the RSNA weighted loss); "any": a binary hemorrhage model (LRCN), the subtype outputs
    #: fixed at the training prevalence (ichd.training.variants.init_any_only_head).
    targets: Literal["all", "any"] = "all"
    tta: bool = False  # out-of-fold predictions averaged over the test-time views (ichd.inference.tta)
    mask_loss_weight: float = 0.5  # weight of the auxiliary mask loss (models with segmentation heads + data.masks)

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
        sizes = self.optim.image_size_per_epoch
        if sizes is not None and (len(sizes) != self.optim.epochs or any(v < 32 or v % 32 for v in sizes)):
            raise ConfigError(f"optim.image_size_per_epoch must give one size per epoch ({self.optim.epochs}), each "
                              f"a multiple of 32 and >= 32, got {sizes}")
        if self.optim.max_steps is not None and self.optim.max_steps < 1:
            raise ConfigError(f"optim.max_steps must be >= 1 (or null), got {self.optim.max_steps}")
        if not 0.0 <= self.optim.momentum < 1.0:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {self.optim.momentum}")
        if self.mask_loss_weight < 0:
            raise ConfigError(f"mask_loss_weight must be >= 0, got {self.mask_loss_weight}")
        if self.data.epoch_samples is not None and self.data.epoch_samples < self.optim.batch_size:
            raise ConfigError(f"data.epoch_samples ({self.data.epoch_samples}) must be at least one batch "
                              f"({self.optim.batch_size})")


def load_cnn_config(path: str | Path, overrides: dict[str, object] | None = None) -> CnnTrainConfig:
    """Load a :class:`CnnTrainConfig` YAML file with dotted-key ``overrides``."""
    from ichd.config import load_config

    return load_config(CnnTrainConfig, path, overrides)
