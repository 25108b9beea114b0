from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from ichd.config import config_from_dict, config_to_dict, load_config, save_config
from ichd.constants import LABEL_WEIGHTS, LABELS
from ichd.errors import ConfigError, InputError, did_you_mean
from ichd.paths import data_dir


@dataclass
class Inner:
    lr: float = 1e-4
    epochs: int = 3


@dataclass
class Outer:
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, int] = (256, 256)
    inner: Inner = field(default_factory=Inner)


def test_labels_are_rsna_order():
    assert LABELS == ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
    assert LABEL_WEIGHTS[0] == 2.0 and sum(LABEL_WEIGHTS) == 7.0


def test_config_round_trip(tmp_path: Path):
    cfg = config_from_dict(Outer, {"name": "y", "mode": "b", "sizes": [128, 128], "inner": {"lr": 1}})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float) and cfg.sizes == (128, 128)
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(Outer, tmp_path / "c.yaml", overrides={"inner.epochs": 7})
    assert again.inner.epochs == 7
    assert config_to_dict(again)["sizes"] == [128, 128]


def test_config_unknown_key_suggests():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        config_from_dict(Outer, {"inner": {"epoch": 2}})


def test_config_bad_types():
    with pytest.raises(ConfigError):
        config_from_dict(Outer, {"inner": {"epochs": "two"}})
    with pytest.raises(ConfigError):
        config_from_dict(Outer, {"mode": "c"})


def test_did_you_mean_lists_choices_when_nothing_close():
    assert "choose one of" in did_you_mean("zzz", ["abc", "def"])


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ICHD_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.setenv("ICHD_DATA", str(tmp_path / "missing"))
    with pytest.raises(InputError, match="ICHD_DATA"):
        data_dir()
