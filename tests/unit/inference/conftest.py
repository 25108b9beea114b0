"""Fixtures for the inference tests: a small random-weight checkpoint and bundle, synthetic CT series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichd.constants import LABELS
from ichd.types import CTSeries

#: Small input size keeps the CPU tests fast (EfficientNet-Lite0 needs a multiple of 32).
IMAGE_SIZE = 64


def synthetic_head(n_slices: int, size: int = 96, *, seed: int = 0) -> np.ndarray:
    """A (z, size, size) float32 HU volume: air, a skull ring (1000 HU), brain (~35 HU) with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    vol = np.full((n_slices, size, size), -1000.0, dtype=np.float32)
    for z in range(n_slices):
        scale = 0.6 + 0.3 * np.sin(np.pi * (z + 1) / (n_slices + 1))
        vol[z][r < scale] = 1000.0
        brain = r < scale - 0.08
        vol[z][brain] = 35.0 + rng.normal(0, 5, size=int(brain.sum()))
    return vol


def _make_series(n_slices: int = 5, size: int = 96, *, uid_root: str = "1.2.826.0.1.3680043.8.498.1",
                 spacing_z: float = 5.0, seed: int = 0) -> CTSeries:
    """A DICOM-like synthetic series with valid UIDs and known positions."""
    return CTSeries(
        hu=synthetic_head(n_slices, size, seed=seed),
        spacing_mm=(spacing_z, 0.5, 0.5),
        positions_mm=np.arange(n_slices, dtype=np.float64) * spacing_z,
        sop_instance_uids=[f"{uid_root}.3.{i + 1}" for i in range(n_slices)],
        study_instance_uid=f"{uid_root}.1",
        series_instance_uid=f"{uid_root}.2",
        source="synthetic",
        source_kind="dicom",
        meta={"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"},
    )


@pytest.fixture
def make_series():
    """Factory of DICOM-like synthetic series with valid UIDs: ``make_series(n_slices, size, ...)``."""
    return _make_series


@pytest.fixture(scope="session")
def cnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained EfficientNet-Lite0 checkpoint at 64 px: the offline ImageNet backbone (so embeddings vary with
    the image; a random-init backbone gives ~1e-9 features) and a seeded random head, saved in fp16."""
    import torch

    from ichd.models import create_model
    from ichd.models.checkpoint import save_checkpoint
    from ichd.preprocessing.config import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", pretrained=True, input_size=IMAGE_SIZE)
    torch.nn.init.normal_(model.classifier.weight, std=0.05)
    path = tmp_path_factory.mktemp("ckpt") / "cnn.pt"
    save_checkpoint(path, model, preprocess=PreprocessConfig(image_size=IMAGE_SIZE), half=True)
    return path


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, cnn_checkpoint: Path) -> Path:
    """A model bundle around :func:`cnn_checkpoint` with thresholds of 0.5 (CNN only)."""
    from ichd.models.bundled import write_bundle

    out = tmp_path_factory.mktemp("bundle") / "test-model"
    write_bundle(out, name="test-model", version="0.0.1", files={"cnn": cnn_checkpoint},
                 thresholds=dict.fromkeys(LABELS, 0.5), model_card="# test model\n\nRandom weights.\n",
                 extra={"description": "random weights for tests", "scan_rule": "max"})
    return out


@pytest.fixture(scope="session")
def seq_checkpoint(tmp_path_factory: pytest.TempPathFactory, cnn_checkpoint: Path) -> Path:
    """A random 1-layer BiLSTM sequence checkpoint over PCA-8 features of the test CNN, embedding that CNN."""
    import torch

    from ichd.models import create_model
    from ichd.models.checkpoint import read_checkpoint, save_checkpoint
    from ichd.models.feature_selection import FeatureSelector, SelectorConfig
    from ichd.models.sequence import sequence_checkpoint_extra

    torch.manual_seed(1)
    rng = np.random.default_rng(0)
    selector = FeatureSelector(SelectorConfig(method="pca", k=8)).fit(rng.normal(size=(40, 1280)).astype(np.float32))
    model = create_model("seq_lstm", feature_dim=8, hidden=16, layers=1, dropout=0.0)
    extra = sequence_checkpoint_extra(selector, scan_rule="max", cnn_checkpoint=read_checkpoint(cnn_checkpoint))
    extra["thresholds"] = dict.fromkeys(LABELS, 0.4)
    path = tmp_path_factory.mktemp("seq") / "seq.pt"
    save_checkpoint(path, model, extra=extra)
    return path


@pytest.fixture(scope="session")
def predictor(bundle_dir: Path):
    """The CNN-only test bundle loaded on the CPU."""
    from ichd.inference.predictor import Predictor

    return Predictor.load(bundle_dir, device="cpu")
