"""PreprocessConfig validation and round trip."""

from __future__ import annotations

import pytest

from ichd.constants import SEED_WINDOWS
from ichd.errors import ConfigError
from ichd.preprocessing.config import PreprocessConfig


def test_defaults_and_round_trip() -> None:
    cfg = PreprocessConfig()
    assert cfg.windows == SEED_WINDOWS and cfg.image_size == 256 and cfg.cache_dtype == "uint8"
    d = cfg.to_dict()
    assert d["windows"]["brain"] == [40.0, 80.0]
    assert PreprocessConfig.from_dict(d) == cfg
    assert "normalization" not in cfg.cache_key()
    assert cfg.n_channels == 3


@pytest.mark.parametrize("kwargs", [{"image_size": 4}, {"cache_dtype": "int16"}, {"normalization": "imagenet"},
                                    {"resize_mode": "cubic"}, {"windows": {"a": (40, 0)}},
                                    {"simulate_window": (40, 0)}, {"simulate_window": (40,)}])
def test_invalid(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)


def test_from_dict_unknown_key() -> None:
    with pytest.raises(ConfigError, match="image_size"):
        PreprocessConfig.from_dict({"image_sise": 128})
