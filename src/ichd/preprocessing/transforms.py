"""MONAI-style transforms: array transforms (act on one array) and dict wrappers (act on keys of a dict).

Array transforms take and return an array (numpy; :class:`Normalize` and :class:`ToFloat` also take torch
tensors). Each dict transform ``Xd(keys, ...)`` applies ``X`` to ``data[key]`` for every key and returns a new
dict, so they chain in :class:`Compose` like MONAI's ``*d`` transforms. They are plain callables (no MONAI
import), so they pickle into DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ichd.preprocessing.normalize import normalize, preset
from ichd.preprocessing.resize import ResizeMode, resize_slices
from ichd.preprocessing.windows import WindowSpec, window_channels, window_list


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


# ---- array transforms: intensity ------------------------------------------------------------------------------

class WindowChannels:
    """HU ``(..., H, W)`` -> float32 ``(..., C, H, W)`` in [0, 1], one channel per window."""

    def __init__(self, windows: WindowSpec | None = None) -> None:
        self.windows = window_list(windows)

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        return window_channels(hu, self.windows)

    def __repr__(self) -> str:
        return f"WindowChannels({self.windows})"


class ToFloat:
    """Cached ``uint8`` 0..255 -> float32 0..1 (float inputs are cast to float32 unchanged)."""

    def __call__(self, x: Any) -> Any:
        if isinstance(x, np.ndarray):
            return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
        import torch

        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def __repr__(self) -> str:
        return "ToFloat()"


class Normalize:
    """``(x - mean) / std`` per channel (axis -3); build from a preset name with :meth:`from_preset`."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @classmethod
    def from_preset(cls, name: str) -> Normalize:
        mean, std = preset(name)
        return cls(mean, std)

    def __call__(self, x: Any) -> Any:
        return normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


# ---- array transforms: spatial --------------------------------------------------------------------------------

class Resize:
    """``(..., H, W)`` -> ``(..., size, size)`` float32, antialiased (non-square inputs padded first)."""

    def __init__(self, size: int, mode: ResizeMode = "bilinear") -> None:
        self.size = int(size)
        self.mode = mode

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return resize_slices(x, self.size, mode=self.mode)

    def __repr__(self) -> str:
        return f"Resize({self.size}, mode={self.mode!r})"


# ---- dict wrappers --------------------------------------------------------------------------------------------

class MapTransform:
    """Apply an array transform to ``data[key]`` for each key (missing keys are an error unless allowed)."""

    def __init__(self, transform: Callable[[Any], Any], keys: Hashable | Iterable[Hashable], *,
                 allow_missing_keys: bool = False) -> None:
        self.transform = transform
        self.keys = (keys,) if isinstance(keys, (str, int)) else tuple(keys)
        self.allow_missing_keys = allow_missing_keys

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for k in self.keys:
            if k not in out:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"{type(self).__name__}: key {k!r} not in the data (keys: {list(out)})")
            out[k] = self.transform(out[k])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(keys={self.keys}, {self.transform!r})"


class WindowChannelsd(MapTransform):
    """Dict version of :class:`WindowChannels`."""

    def __init__(self, keys: Hashable | Iterable[Hashable], windows: WindowSpec | None = None, *,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(WindowChannels(windows), keys, allow_missing_keys=allow_missing_keys)


class ToFloatd(MapTransform):
    """Dict version of :class:`ToFloat`."""

    def __init__(self, keys: Hashable | Iterable[Hashable], *, allow_missing_keys: bool = False) -> None:
        super().__init__(ToFloat(), keys, allow_missing_keys=allow_missing_keys)


class Normalized(MapTransform):
    """Dict version of :class:`Normalize` (give ``mean``/``std`` or ``preset``)."""

    def __init__(self, keys: Hashable | Iterable[Hashable], mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, *, preset: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        if preset is not None:
            t = Normalize.from_preset(preset)
        elif mean is not None and std is not None:
            t = Normalize(mean, std)
        else:
            raise TypeError("Normalized needs mean and std, or preset")
        super().__init__(t, keys, allow_missing_keys=allow_missing_keys)


class Resized(MapTransform):
    """Dict version of :class:`Resize`."""

    def __init__(self, keys: Hashable | Iterable[Hashable], size: int, mode: ResizeMode = "bilinear", *,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(Resize(size, mode), keys, allow_missing_keys=allow_missing_keys)
