"""Per-channel normalisation ``(x - mean) / std`` with named presets.

Presets: ``"seed"`` (:data:`~ichd.constants.SEED_MEAN` / :data:`~ichd.constants.SEED_STD`, the seed's statistics
of the three windows), ``"half"`` (``(x - 0.5) / 0.5``, maps [0, 1] to [-1, 1]; what efficientnet-lite expects)
and ``"none"`` (identity). The cache stores un-normalised images; models normalise per their ``default_cfg``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ichd.constants import SEED_MEAN, SEED_STD
from ichd.errors import ConfigError, did_you_mean

#: Named (mean, std) presets for three-channel inputs in [0, 1].
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "seed": (tuple(SEED_MEAN), tuple(SEED_STD)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def preset(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of preset ``name``; :class:`ConfigError` (with suggestions) when unknown."""
    try:
        return NORMALIZATION_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown normalization preset {name!r}; "
                          f"{did_you_mean(name, NORMALIZATION_PRESETS)}") from None


def normalize(x, mean: Sequence[float], std: Sequence[float], *, channel_axis: int = -3):
    """``(x - mean) / std`` per channel along ``channel_axis`` (default: the C of ``(..., C, H, W)``).

    Works on numpy arrays (returns float32) and torch tensors (returns a tensor of the input's float dtype).
    """
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    if mean_a.shape != std_a.shape or mean_a.ndim != 1:
        raise ConfigError(f"mean and std must be two equal-length lists, got {list(mean)} and {list(std)}")
    if np.any(std_a <= 0):
        raise ConfigError(f"std values must be positive, got {list(std)}")
    n = x.shape[channel_axis]
    if n != mean_a.shape[0]:
        raise ConfigError(f"input has {n} channels but mean/std have {mean_a.shape[0]} values")
    axis = channel_axis % x.ndim
    shape = [1] * x.ndim
    shape[axis] = n
    if isinstance(x, np.ndarray):
        return ((x.astype(np.float32, copy=False) - mean_a.reshape(shape)) / std_a.reshape(shape)).astype(np.float32)
    import torch

    xt = x if torch.is_floating_point(x) else x.float()
    m = torch.as_tensor(mean_a, dtype=xt.dtype, device=xt.device).reshape(shape)
    s = torch.as_tensor(std_a, dtype=xt.dtype, device=xt.device).reshape(shape)
    return (xt - m) / s


def normalize_preset(x, name: str, *, channel_axis: int = -3):
    """:func:`normalize` with the named preset (``"seed"``, ``"half"`` or ``"none"``)."""
    mean, std = preset(name)
    if name == "none":
        return x
    return normalize(x, mean, std, channel_axis=channel_axis)
