"""Train-time augmentation (the seed's transforms) and a class-balanced sampler.

Burduja et al. (2020) augment with Albumentations: horizontal flip, shift, scale, rotation and brightness. The paper
names the transforms but not their ranges, so :class:`AugmentConfig` defaults to Albumentations' own defaults for
them (shift +-6.25 %, scale +-10 %, rotation +-45 degrees as in ``ShiftScaleRotate``; brightness/contrast +-0.2),
each applied with probability 0.5. Out-of-image pixels after the affine warp are filled with 0 (air).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichd.constants import LABELS
from ichd.errors import ConfigError, InputError


@dataclass
class AugmentConfig:
    """Augmentation ranges and probabilities (0 disables a transform)."""

    hflip_p: float = 0.5
    affine_p: float = 0.5
    shift: float = 0.0625
    scale: float = 0.1
    rotate_deg: float = 45.0
    brightness_contrast_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2

    def __post_init__(self) -> None:
        for name in ("hflip_p", "affine_p", "brightness_contrast_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augmentation {name} must be a probability in [0, 1], got {v}")
        for name in ("shift", "scale", "rotate_deg", "brightness", "contrast"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")


class Augmentation:
    """Callable on a float32 ``(C, H, W)`` image in [0, 1]; returns the augmented image, same shape, clipped.

    The image is augmented as 8-bit (``round(x * 255)``): Albumentations' brightness/contrast is ~70x faster on
    uint8 (a lookup table) than on float32 (3.6 ms vs 0.05 ms per 256 x 256 x 3 slice on the 2-core VM). For images
    from a ``uint8`` cache this quantisation is lossless; ``float16`` caches lose at most 0.5/255. A ``uint8``
    ``(C, H, W)`` input (0..255) is taken as is, which :class:`~ichd.data.datasets.SliceDataset` does for
    transforms with ``accepts_uint8 = True`` to skip a float round trip.
    """

    #: Tells datasets that the raw uint8 cache slice may be passed in directly.
    accepts_uint8 = True

    def __init__(self, cfg: AugmentConfig, seed: int | None = None) -> None:
        import os

        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A

        self.cfg = cfg
        steps: list[Any] = []
        if cfg.hflip_p > 0:
            steps.append(A.HorizontalFlip(p=cfg.hflip_p))
        if cfg.affine_p > 0:
            steps.append(A.Affine(translate_percent=(-cfg.shift, cfg.shift), scale=(1 - cfg.scale, 1 + cfg.scale),
                                  rotate=(-cfg.rotate_deg, cfg.rotate_deg), border_mode=0, fill=0,
                                  p=cfg.affine_p))
        if cfg.brightness_contrast_p > 0:
            steps.append(A.RandomBrightnessContrast(brightness_limit=cfg.brightness, contrast_limit=cfg.contrast,
                                                    p=cfg.brightness_contrast_p))
        self.pipeline = A.Compose(steps, seed=seed) if seed is not None else A.Compose(steps)

    def reseed(self, seed: int) -> None:
        """Reset the random stream (Albumentations 2 ignores numpy/random seeding): call it from a DataLoader
        ``worker_init_fn`` with the worker's seed so augmented runs are reproducible and resumable."""
        self.pipeline.set_random_seed(int(seed) % 2**32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3:
            raise ValueError(f"augmentation expects a (C, H, W) image, got shape {image.shape}")
        x = np.asarray(image)
        if x.dtype != np.uint8:
            x = np.rint(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
        out = self.pipeline(image=np.ascontiguousarray(np.moveaxis(x, 0, -1)))["image"]
        return np.moveaxis(out, -1, 0).astype(np.float32) * np.float32(1.0 / 255.0)

    def __repr__(self) -> str:
        return f"Augmentation({self.cfg})"


def train_augmentation(cfg: AugmentConfig | dict[str, Any] | None = None, *, seed: int | None = None
                       ) -> Augmentation:
    """The train-time transform for :class:`~ichd.data.datasets.SliceDataset` (``transform=``)."""
    if isinstance(cfg, dict):
        from ichd.config import config_from_dict

        cfg = config_from_dict(AugmentConfig, cfg, where="augment")
    return Augmentation(cfg or AugmentConfig(), seed=seed)


def balanced_sampler(labels: Any, *, positive_fraction: float = 0.5, num_samples: int | None = None,
                     label: str = "any", seed: int | None = None):  # -> torch.utils.data.WeightedRandomSampler
    """A sampler that draws positive slices (``label`` = 1) with probability ``positive_fraction``.

    ``labels`` is a label table (DataFrame with a ``label`` column), an ``(n, 6)`` array in
    :data:`~ichd.constants.LABELS` order, or an ``(n,)`` 0/1 vector, in the dataset's item order. Samples with
    replacement, ``num_samples`` per epoch (default: the dataset size).
    """
    import torch
    from torch.utils.data import WeightedRandomSampler

    if not 0.0 < positive_fraction < 1.0:
        raise ConfigError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
    if hasattr(labels, "columns"):
        if label not in labels.columns:
            raise InputError(f"the label table has no column {label!r}")
        y = labels[label].to_numpy()
    else:
        arr = np.asarray(labels)
        y = arr[:, LABELS.index(label)] if arr.ndim == 2 else arr
    y = np.asarray(y, dtype=np.float64) > 0.5
    n_pos, n = int(y.sum()), len(y)
    if n == 0:
        raise InputError("balanced_sampler got no labels")
    if n_pos in (0, n):
        weights = np.ones(n)
    else:
        weights = np.where(y, positive_fraction / n_pos, (1 - positive_fraction) / (n - n_pos))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples or n,
                                 replacement=True, generator=gen)


def sampler_positive_share(sampler: Any, labels: Sequence[int]) -> float:
    """Fraction of positives among the indices ``sampler`` yields once (for checks and logging)."""
    idx = list(iter(sampler))
    y = np.asarray(labels)
    return float(y[idx].mean()) if idx else 0.0
