"""Segmentation masks in the slice dataset: read from a mask folder, served with has_mask, moved together with the
image by the augmentation (a synthetic cache and mask folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ichd.data.augment import AugmentConfig, train_augmentation
from ichd.data.datasets import SliceDataset
from ichd.data.masks import read_mask_folders, read_masks
from ichd.errors import InputError
from ichd.preprocessing.cache import build_cache
from ichd.preprocessing.config import PreprocessConfig
from ichd.testing.factories import write_ctich_tree


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("masks")
    write_ctich_tree(tmp / "ctich", {49: 3}, size=32)
    build_cache([tmp / "ctich"], tmp / "cache", PreprocessConfig(image_size=16), workers=0)
    return tmp / "cache"


def _mask_folder(root: Path, rows: list[dict], masks: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in masks.items():
        Image.fromarray(arr.astype(np.uint8) * 255).save(root / name)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_read_masks_layouts(tmp_path: Path) -> None:
    m = np.zeros((32, 32), bool)
    m[:16, :8] = True  # top-left block
    by_id = _mask_folder(tmp_path / "a", [{"mask": "a.png", "slice_id": "ctich-049-002"}], {"a.png": m})
    out = read_masks(by_id, 16)
    assert list(out) == ["ctich-049-002"] and out["ctich-049-002"].shape == (16, 16)
    assert out["ctich-049-002"][:8, :4].min() == 1.0 and out["ctich-049-002"][8:].max() == 0.0
    # hu-slices layout: patient + ctich_slice, stored rotated clockwise -> turned back with rot90(., 1)
    hu = _mask_folder(tmp_path / "b", [{"mask": "b.png", "patient": 49, "ctich_slice": 3}], {"b.png": m})
    turned = read_masks(hu, 16)["ctich-049-003"]
    assert np.array_equal(turned, np.rot90(read_masks(by_id, 16)["ctich-049-002"], 1))
    with pytest.raises(InputError, match="more than one mask folder"):
        read_mask_folders([by_id, by_id], 16)
    bad = _mask_folder(tmp_path / "c", [{"mask": "c.png"}], {"c.png": m})
    with pytest.raises(InputError, match="slice_id column"):
        read_masks(bad, 16)
    with pytest.raises(InputError, match="no labels.csv"):
        read_masks(tmp_path / "missing", 16)


def test_dataset_serves_masks_and_augments_them_with_the_image(cache: Path) -> None:
    mask = np.zeros((16, 16), np.float32)
    mask[:, :4] = 1.0  # the left edge
    ds = SliceDataset(cache, ["ctich-049-001", "ctich-049-002"], masks={"ctich-049-002": mask})
    plain = ds[1]
    assert plain["has_mask"].item() is True and torch.equal(plain["mask"][0], torch.from_numpy(mask))
    assert ds[0]["has_mask"].item() is False and ds[0]["mask"].abs().sum() == 0
    flip = train_augmentation(AugmentConfig(hflip_p=1.0, affine_p=0.0, brightness_contrast_p=0.0), seed=0)
    ds.transform = flip
    item = ds[1]
    assert torch.equal(item["mask"][0], torch.from_numpy(mask[:, ::-1].copy()))  # moved with the image
    assert torch.allclose(item["image"], plain["image"].flip(-1), atol=1 / 255)
    with pytest.raises(InputError, match="16 x 16"):
        SliceDataset(cache, ["ctich-049-002"], masks={"ctich-049-002": np.zeros((8, 8), np.float32)})
    ds.transform = lambda x: x  # a transform that cannot move masks is refused
    with pytest.raises(InputError, match="cannot augment masks"):
        ds[1]


def test_collated_masks_are_not_metadata(cache: Path) -> None:
    from torch.utils.data import DataLoader

    from ichd.training.trainer import split_batch

    mask = np.ones((16, 16), np.float32)
    labels = pd.DataFrame({"slice_id": ["ctich-049-001", "ctich-049-002"], **{k: [0, 1] for k in (
        "any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")}}).set_index("slice_id")
    ds = SliceDataset(cache, list(labels.index), labels=labels, masks={"ctich-049-002": mask})
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["mask"].shape == (2, 1, 16, 16) and batch["has_mask"].tolist() == [False, True]
    _, _, meta = split_batch(batch)
    assert set(meta) == {"slice_id"}
