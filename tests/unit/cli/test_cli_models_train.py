"""``ichd models`` and ``ichd train``: listing, descriptions, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ichd.cli.main import run

REPO = Path(__file__).resolve().parents[3]


def test_models_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("efficientnet_lite0", "densenet121", "seresnext50", "resnext101_32x8d", "resnet18"):
        assert name in out
    assert run(["models", "list", "--json", "--family", "slice"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {a["family"] for a in doc["architectures"]} == {"slice"}


def test_models_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["models", "info", "resnet18"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["default_cfg"]["gradcam_layer"] == "backbone.layer4" and info["parameters"] > 10_000_000
    assert run(["models", "info", "efficientnet_lit0"]) == 2
    assert "did you mean 'efficientnet_lite0'" in capsys.readouterr().err


def test_train_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(REPO / "configs" / "cnn_ctich.yaml")
    assert run(["train", "cnn", "--config", cfg, "--fold", "9"]) == 2
    assert "fold must be 0..4 or 'all'" in capsys.readouterr().err
    assert run(["train", "cnn", "--config", cfg, "--set", "optim.batchsize=8"]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err
    assert run(["train", "cnn", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert run(["train", "merge", str(tmp_path)]) == 2
    assert "no fold*/oof.csv" in capsys.readouterr().err


def test_train_pretrained_needs_shipped_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(REPO / "configs" / "cnn_ctich.yaml")
    args = ["train", "cnn", "--config", cfg, "--out", str(tmp_path / "run"), "--set", "model.name=resnet18"]
    assert run(args) == 2  # checked before any data is read
    assert "'resnet18' ships no offline weights" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
