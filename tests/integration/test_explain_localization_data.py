"""The localization check's data: 26 real-HU slices with masks, rotated into the CT-ICH JPG orientation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ichd.explain.localization import (
    bootstrap_means,
    chance_levels,
    energy_fraction,
    head_region,
    pointing_game,
    read_masked_slices,
)


@pytest.fixture(scope="module")
def masked(data_root):
    return read_masked_slices(data_root / "hu-slices")


def test_slices_masks_and_labels(masked) -> None:
    assert len(masked) == 26
    assert len({s.patient_id for s in masked}) == 16
    for s in masked:
        assert s.hu.shape == s.mask.shape == (512, 512)
        assert s.labels["any"] == 1 and s.mask.any()
        assert (s.mask & ~head_region(s.hu)).sum() == 0  # the mask lies inside the head
        assert 30 <= float(np.median(s.hu[s.mask])) <= 80  # acute blood


def test_rotation_matches_the_ctich_jpg(masked, data_root) -> None:
    """After rot90 the HU slice, windowed like the JPG export (L40/W120), correlates with its CT-ICH JPG."""
    from skimage.transform import resize

    from ichd.constants import CTICH_BRAIN_WINDOW
    from ichd.preprocessing.windows import apply_window

    s = next(m for m in masked if m.name == "071_14")
    jpg = np.asarray(Image.open(data_root / "ct-ich" / "brain" / "071" / f"{s.ctich_slice:03d}.jpg"), np.float32)
    jpg = resize(jpg, s.hu.shape, order=1, anti_aliasing=True)
    win = apply_window(s.hu, *CTICH_BRAIN_WINDOW)

    def ncc(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    assert ncc(win, jpg) > 0.85
    assert ncc(np.rot90(win, -1), jpg) < 0.6  # the unrotated slice does not match


def test_an_oracle_map_scores_perfectly_and_chance_is_low(masked) -> None:
    hits, energy, chance = [], [], []
    for s in masked:
        oracle = s.mask.astype(np.float32)
        hits.append(pointing_game(oracle, s.mask))
        energy.append(energy_fraction(oracle, s.mask))
        chance.append(chance_levels(s.mask, head_region(s.hu))[0])
    assert all(hits) and np.allclose(energy, 1.0)
    est = bootstrap_means({"chance": np.array(chance)}, [s.patient_id for s in masked], n_boot=200)
    assert est["chance"].mean < 0.2 and est["chance"].low <= est["chance"].mean <= est["chance"].high
    assert est["chance"].n_patients == 16
