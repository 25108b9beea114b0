"""The 26 hu-slices hemorrhage masks land on the CT-ICH slices they belong to, in the CT-ICH orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def test_hu_slices_masks_align_with_the_ctich_jpgs(data_root: Path) -> None:
    from ichd.data.masks import read_masks

    root = data_root / "hu-slices"
    if not root.is_dir():
        pytest.skip("hu-slices not in the data folder")
    masks = read_masks(root, 128)
    assert len(masks) == 26 and len({k.split("-")[1] for k in masks}) == 16  # 26 slices of 16 patients
    assert "ctich-051-014" in masks  # 051_23 matches CT-ICH slice 14 (labels.csv ctich_slice)
    inside, flipped = [], []
    for slice_id, mask in masks.items():
        _, patient, number = slice_id.split("-")
        jpg = Image.open(data_root / "ct-ich" / "brain" / patient / f"{number}.jpg").convert("L")
        brain = np.asarray(jpg.resize((128, 128), Image.BILINEAR), dtype=np.float32)
        m = mask > 0.5
        assert m.any()
        inside.append(brain[m].mean())
        flipped.append(brain[np.rot90(m, 2)].mean())  # the same mask turned the wrong way
    # blood is bright in the brain window: the aligned masks cover brighter pixels than misplaced ones
    assert np.mean(inside) > np.mean(flipped) + 20 and np.median(inside) > 150
