"""The preprocessing configuration saved in every cache manifest and checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ichd.constants import SEED_WINDOWS
from ichd.errors import ConfigError

#: Values of ``PreprocessConfig.crop``.
CROP_MODES: tuple[str, ...] = ("none", "head")


@dataclass
class PreprocessConfig:
    """How a HU volume becomes model input.

    Attributes:
        windows: name -> (level, width) in HU, in channel order (default: the seed's brain, subdural and soft
            tissue windows).
        image_size: output side length S in pixels (slices become S x S; non-square ones are padded first).
        cache_dtype: ``"uint8"`` (0..255, 4x smaller, quantisation step 1/255 of a window) or ``"float16"``
            (0..1).
        normalization: preset applied at training/inference time (``"seed"``, ``"half"``, ``"none"``); the cache
            itself is never normalised.
        resize_mode: ``"bilinear"`` (antialiased) or ``"area"``.
        crop: ``"none"`` (the whole slice, padded to a square) or ``"head"`` (the square around the head on every
            slice of the series, :func:`ichd.preprocessing.head_mask.head_crop_box`, so that every source is framed
            the same way). The cache and inference use the same rule (:func:`ichd.preprocessing.pipeline.preprocess_hu`).
        simulate_window: ``None`` (the HU as read), or ``(level, width)`` of an 8-bit display window that every
            slice is first reduced to, as a windowed PNG/JPG export keeps it (clipped to ``[L - W/2, L + W/2]``
            and quantised to 256 gray levels, :func:`ichd.preprocessing.windows.simulate_display_window`). Used
            for *training* caches that teach a model what such inputs look like (``data.augment_caches`` of
            ``ichd train frozen``); a model's own preprocessing never sets it.
    """

    windows: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(SEED_WINDOWS))
    image_size: int = 256
    cache_dtype: Literal["uint8", "float16"] = "uint8"
    normalization: str = "seed"
    resize_mode: Literal["bilinear", "area"] = "bilinear"
    crop: Literal["none", "head"] = "none"
    simulate_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        from ichd.preprocessing.normalize import preset
        from ichd.preprocessing.windows import window_list

        self.windows = {str(k): (float(v[0]), float(v[1])) for k, v in dict(self.windows).items()}
        window_list(self.windows)
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ConfigError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if self.cache_dtype not in ("uint8", "float16"):
            raise ConfigError(f"cache_dtype must be 'uint8' or 'float16', got {self.cache_dtype!r}")
        if self.resize_mode not in ("bilinear", "area"):
            raise ConfigError(f"resize_mode must be 'bilinear' or 'area', got {self.resize_mode!r}")
        if self.crop not in CROP_MODES:
            raise ConfigError(f"crop must be one of {', '.join(CROP_MODES)}, got {self.crop!r}")
        preset(self.normalization)
        if self.simulate_window is not None:
            sw = tuple(self.simulate_window)
            if len(sw) != 2 or not float(sw[1]) > 0:
                raise ConfigError(f"simulate_window must be (level, width) with width > 0, got {self.simulate_window!r}")
            self.simulate_window = (float(sw[0]), float(sw[1]))

    @property
    def n_channels(self) -> int:
        return len(self.windows)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (windows as ``[level, width]`` lists)."""
        from ichd.config import config_to_dict

        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        from ichd.config import config_from_dict

        return config_from_dict(cls, dict(data), where="preprocess")

    def cache_key(self) -> dict[str, Any]:
        """The settings that change the cached arrays (normalisation does not: it is applied on read)."""
        d = self.to_dict()
        d.pop("normalization")
        if d.get("crop") == "none":
            d.pop("crop")  # caches built before the option existed keep their key
        if d.get("simulate_window") is None:
            d.pop("simulate_window", None)  # likewise
        return d

    def replace(self, **changes: Any) -> PreprocessConfig:
        return dataclasses.replace(self, **changes)
