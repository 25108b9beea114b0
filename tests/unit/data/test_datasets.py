"""SliceDataset / ScanDataset over a small synthetic cache, pad_collate, augmentation and the sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ichd.constants import LABELS, SEED_MEAN, SEED_STD
from ichd.data.augment import AugmentConfig, balanced_sampler, sampler_positive_share, train_augmentation
from ichd.data.datasets import ScanDataset, SliceDataset, pad_collate
from ichd.errors import ConfigError, InputError
from ichd.preprocessing.cache import build_cache, open_cache
from ichd.preprocessing.config import PreprocessConfig
from ichd.testing.factories import write_ctich_tree


@pytest.fixture(scope="module")
def cache_and_labels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("ds")
    patients = {49: 3, 50: 5}
    write_ctich_tree(tmp / "ctich", patients, size=20)
    rows = []
    for p, n in patients.items():
        for s in range(1, n + 1):
            y = [int(s == 2), 0, int(s == 2), 0, 0, 0]
            rows.append({"slice_id": f"ctich-{p:03d}-{s:03d}", "scan_id": f"ctich-{p:03d}",
                         "patient_id": f"ctich-{p:03d}", "slice_index": s - 1, **dict(zip(LABELS, y))})
    build_cache([tmp / "ctich"], tmp / "cache", PreprocessConfig(image_size=16), workers=0)
    return tmp / "cache", pd.DataFrame(rows).set_index("slice_id")


def test_slice_dataset_items(cache_and_labels: tuple[Path, pd.DataFrame]) -> None:
    path, labels = cache_and_labels
    ds = SliceDataset(path, ["ctich-050-002", "ctich-049-001"], labels)
    assert len(ds) == 2
    item = ds[0]
    assert item["slice_id"] == "ctich-050-002"
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["target"].tolist() == [1, 0, 1, 0, 0, 0]
    cached = open_cache(path).array("ctich-050")[1].astype(np.float32) / 255
    np.testing.assert_allclose(item["image"].numpy(), cached, atol=1e-6)
    assert ds[-1]["slice_id"] == "ctich-049-001"
    with pytest.raises(IndexError):
        ds[2]


def test_slice_dataset_normalization_and_no_labels(cache_and_labels: tuple[Path, pd.DataFrame]) -> None:
    path, _ = cache_and_labels
    raw = SliceDataset(path)
    assert len(raw) == 8 and "target" not in raw[0]
    norm = SliceDataset(open_cache(path), normalization="seed")
    expected = (raw[3]["image"] - torch.tensor(SEED_MEAN).view(3, 1, 1)) / torch.tensor(SEED_STD).view(3, 1, 1)
    torch.testing.assert_close(norm[3]["image"], expected)
    loader = torch.utils.data.DataLoader(norm, batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 16, 16) and len(batch["slice_id"]) == 4


def test_slice_dataset_errors(cache_and_labels: tuple[Path, pd.DataFrame]) -> None:
    path, labels = cache_and_labels
    with pytest.raises(InputError, match="not in the cache"):
        SliceDataset(path, ["ctich-999-001"])
    with pytest.raises(InputError, match="no labels"):
        SliceDataset(path, ["ctich-049-001"], labels.drop(index="ctich-049-001"))


def test_scan_dataset_and_pad_collate(cache_and_labels: tuple[Path, pd.DataFrame]) -> None:
    path, labels = cache_and_labels
    ds = ScanDataset(path, labels=labels)
    assert ds.scan_ids == ["ctich-049", "ctich-050"]
    item = ds[1]
    assert item["image"].shape == (5, 3, 16, 16) and item["target"].shape == (5, 6)
    assert item["slice_ids"] == [f"ctich-050-{s:03d}" for s in range(1, 6)]
    batch = pad_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 5, 3, 16, 16) and batch["target"].shape == (2, 5, 6)
    assert batch["mask"].sum(1).tolist() == [3, 5] and batch["length"].tolist() == [3, 5]
    assert float(batch["image"][0, 3:].abs().sum()) == 0.0
    with pytest.raises(InputError):
        ScanDataset(path, ["nope"])


def test_train_augmentation_shapes_and_determinism() -> None:
    # images as they come from a uint8 cache (multiples of 1/255): the 8-bit augmentation path is lossless for them
    img = np.random.default_rng(0).integers(0, 256, (3, 32, 32)).astype(np.float32) / np.float32(255)
    a = train_augmentation(seed=1)(img)
    b = train_augmentation(seed=1)(img)
    assert a.shape == img.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    aug = train_augmentation(seed=5)
    first = [aug(img) for _ in range(3)]
    aug.reseed(5)
    for x, y in zip(first, [aug(img) for _ in range(3)]):
        np.testing.assert_array_equal(x, y)
    off = train_augmentation({"hflip_p": 0, "affine_p": 0, "brightness_contrast_p": 0})
    np.testing.assert_allclose(off(img), img, atol=1e-7)
    flip = train_augmentation({"hflip_p": 1, "affine_p": 0, "brightness_contrast_p": 0})
    np.testing.assert_allclose(flip(img), img[:, :, ::-1], atol=1e-7)
    assert not np.allclose(a, img)
    with pytest.raises(ConfigError):
        AugmentConfig(hflip_p=2)
    with pytest.raises(ValueError):
        train_augmentation()(img[0])


def test_balanced_sampler() -> None:
    y = np.zeros(1000, dtype=int)
    y[:50] = 1
    sampler = balanced_sampler(y, positive_fraction=0.5, num_samples=4000, seed=0)
    assert abs(sampler_positive_share(sampler, y) - 0.5) < 0.05
    frame = pd.DataFrame({"any": y})
    assert len(list(balanced_sampler(frame, seed=0))) == 1000
    with pytest.raises(ConfigError):
        balanced_sampler(y, positive_fraction=1.0)
    with pytest.raises(InputError):
        balanced_sampler(frame, label="subdural")


def test_uint8_transform_path_matches_float_path(cache_and_labels: tuple[Path, pd.DataFrame]) -> None:
    path, _ = cache_and_labels
    identity = train_augmentation({"hflip_p": 0, "affine_p": 0, "brightness_contrast_p": 0})
    assert identity.accepts_uint8
    with_aug = SliceDataset(path, transform=identity, normalization="half")
    plain = SliceDataset(path, normalization="half")
    for i in range(len(plain)):
        torch.testing.assert_close(with_aug[i]["image"], plain[i]["image"])
    flipped = SliceDataset(path, transform=train_augmentation({"hflip_p": 1, "affine_p": 0,
                                                               "brightness_contrast_p": 0}))
    torch.testing.assert_close(flipped[0]["image"], SliceDataset(path)[0]["image"].flip(-1))
