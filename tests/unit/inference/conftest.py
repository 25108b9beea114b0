"""Fixtures for the inference tests: small untrained models (tests/model_factories.py), synthetic CT series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichd.types import CTSeries


def synthetic_head(n_slices: int, size: int = 64, *, seed: int = 0) -> np.ndarray:
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


def _make_series(n_slices: int = 5, size: int = 64, *, uid_root: str = "1.2.826.0.1.3680043.8.498.1",
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
    """An untrained EfficientNet-Lite0 checkpoint at 64 px (see tests/model_factories.py)."""
    from model_factories import make_cnn_checkpoint

    return make_cnn_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn.pt")


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, cnn_checkpoint: Path) -> Path:
    """A CNN-only model bundle around :func:`cnn_checkpoint` with thresholds of 0.5."""
    from model_factories import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "test-model", cnn_checkpoint)


@pytest.fixture(scope="session")
def seq_checkpoint(tmp_path_factory: pytest.TempPathFactory, cnn_checkpoint: Path) -> Path:
    """A random BiLSTM sequence checkpoint over the test CNN (embedded), thresholds 0.4."""
    from model_factories import make_seq_checkpoint

    return make_seq_checkpoint(tmp_path_factory.mktemp("seq") / "seq.pt", cnn_checkpoint)


@pytest.fixture(scope="session")
def predictor(bundle_dir: Path):
    """The CNN-only test bundle loaded on the CPU."""
    from ichd.inference.predictor import Predictor

    return Predictor.load(bundle_dir, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Torch on one CPU thread for these tests (see tests/model_factories.single_thread_torch)."""
    from model_factories import single_thread_torch

    yield from single_thread_torch()
