"""Unit tests for ichd.io.images: CT-ICH window merge and reader, generic windowed image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichd.constants import AIR_HU
from ichd.errors import InputError
from ichd.io.images import (
    ctich_bone_offsets,
    ctich_patients,
    ctich_to_hu,
    is_ctich_root,
    natural_key,
    parse_window,
    read_ctich,
    read_ctich_patient,
    read_image_folder,
    window_to_hu,
)


def test_window_to_hu_edges() -> None:
    hu = window_to_hu(np.array([0, 255], dtype=np.uint8), 40, 80)
    assert hu.dtype == np.float32
    np.testing.assert_allclose(hu, [0.0, 80.0])


def test_ctich_to_hu_uses_brain_inside_and_bone_outside() -> None:
    brain = np.array([[128, 1, 255, 2, 3, 252, 253]], dtype=np.uint8)
    bone = np.array([[10, 0, 200, 50, 50, 50, 250]], dtype=np.uint8)
    hu = ctich_to_hu(brain, bone)
    brain_hu = -20 + brain.astype(np.float64) * 120 / 255
    bone_hu = -900 + bone.astype(np.float64) * 3200 / 255
    # 128, 3 and 252 lie inside the brain window (margin 2); 1, 2, 253 and 255 are saturated -> bone values
    expected = np.where([[1, 0, 0, 0, 1, 1, 0]], brain_hu, bone_hu)
    np.testing.assert_allclose(hu, expected, atol=1e-4)
    assert hu.dtype == np.float32


def test_ctich_to_hu_strict_margin_zero() -> None:
    brain = np.array([[1, 0, 254, 255]], dtype=np.uint8)
    bone = np.zeros_like(brain)
    hu = ctich_to_hu(brain, bone, margin=0)
    np.testing.assert_allclose(hu[0, [0, 2]], -20 + np.array([1, 254]) * 120 / 255, atol=1e-4)
    np.testing.assert_allclose(hu[0, [1, 3]], -900.0)


def test_ctich_to_hu_without_bone_maps_black_to_air_and_white_to_window_top() -> None:
    brain = np.array([[0, 1, 100, 255]], dtype=np.uint8)
    hu = ctich_to_hu(brain, None)
    np.testing.assert_allclose(hu, [[AIR_HU, AIR_HU, -20 + 100 * 120 / 255, 100.0]], atol=1e-4)


def test_ctich_to_hu_rejects_bad_inputs() -> None:
    with pytest.raises(InputError, match="shape"):
        ctich_to_hu(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match="8-bit"):
        ctich_to_hu(np.zeros((4, 4), np.float32))


def _write_ctich(root: Path, patient: int, n: int, *, size: int = 16, skip_bone: tuple[int, ...] = (),
                 bone_extra: int = 0) -> None:
    rng = np.random.default_rng(patient)
    for window, count in (("brain", n), ("bone", n + bone_extra)):
        folder = root / window / f"{patient:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for s in range(1, count + 1):
            if window == "bone" and s in skip_bone:
                continue
            # each slice has a constant gray level = slice number * 10, so order and offsets are visible
            arr = np.full((size, size), 10 * s, dtype=np.uint8)
            arr[0, 0] = rng.integers(0, 255)
            Image.fromarray(arr).save(folder / f"{s:03d}.jpg", quality=100)


def test_read_ctich_patient_ids_order_and_geometry(tmp_path: Path) -> None:
    _write_ctich(tmp_path, 49, 12)
    assert is_ctich_root(tmp_path)
    assert ctich_patients(tmp_path) == [49]
    s = read_ctich_patient(tmp_path, 49)
    assert s.hu.shape == (12, 16, 16)
    assert s.series_instance_uid == "ctich-049" and s.meta["patient_id"] == "ctich-049"
    assert s.sop_instance_uids[0] == "ctich-049-001" and s.sop_instance_uids[-1] == "ctich-049-012"
    assert np.isnan(s.spacing_mm).all()
    np.testing.assert_array_equal(s.positions_mm, np.arange(12))
    assert s.source_kind == "ctich"
    # slice 10 (gray 100) is inside the brain window: HU = -20 + 100 * 120/255 (JPEG error < 1.5 levels)
    assert abs(float(np.median(s.hu[9])) - (-20 + 100 * 120 / 255)) < 1.0
    assert not s.warnings


def test_read_ctich_patient_sorts_numerically(tmp_path: Path) -> None:
    _write_ctich(tmp_path, 50, 11)
    s = read_ctich_patient(tmp_path, 50)
    medians = [float(np.median(x)) for x in s.hu[2:]]  # slices 3..11 are inside the brain window
    assert medians == sorted(medians)


def test_missing_bone_gives_brain_only_slice_and_warning(tmp_path: Path) -> None:
    _write_ctich(tmp_path, 84, 5, skip_bone=(3,))
    s = read_ctich_patient(tmp_path, 84)
    codes = [w.code for w in s.warnings]
    assert codes == ["missing_bone_window"]
    assert s.warnings[0].files[0].endswith("bone/084/003.jpg")


def test_bone_offset_from_known_issues(tmp_path: Path) -> None:
    # all-black (saturated) brain slices, so every HU value comes from the bone JPG; bone/<s> has gray 40*s
    root = tmp_path
    for s in range(1, 5):
        d = root / "brain" / "081"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / f"{s:03d}.jpg", quality=100)
    for s in range(1, 7):
        d = root / "bone" / "081"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * s, np.uint8)).save(d / f"{s:03d}.jpg", quality=100)
    (root / "known_issues.csv").write_text(
        'patient,window,issue\n81,bone,"bone/081/<s+2>.jpg shows the same anatomy as brain/081/<s>.jpg"\n')
    assert ctich_bone_offsets(root) == {81: 2}
    s = read_ctich_patient(root, 81)
    expected_first = -900 + 40 * 3 * 3200 / 255  # brain 1 <- bone 3
    assert abs(float(np.median(s.hu[0])) - expected_first) < 30
    assert "bone_offset" in [w.code for w in s.warnings]


def test_default_bone_offsets_without_known_issues(tmp_path: Path) -> None:
    assert ctich_bone_offsets(tmp_path) == {81: 2}


def test_known_issues_bad_columns(tmp_path: Path) -> None:
    (tmp_path / "known_issues.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="missing column"):
        ctich_bone_offsets(tmp_path)


def test_read_ctich_unknown_patient(tmp_path: Path) -> None:
    _write_ctich(tmp_path, 49, 3)
    with pytest.raises(InputError, match="077"):
        read_ctich(tmp_path, patients=[77])
    with pytest.raises(InputError, match="no brain JPGs"):
        read_ctich_patient(tmp_path, 77)
    assert [s.series_instance_uid for s in read_ctich(tmp_path)] == ["ctich-049"]


def test_is_ctich_root_false(tmp_path: Path) -> None:
    assert not is_ctich_root(tmp_path)
    (tmp_path / "brain" / "x").mkdir(parents=True)
    assert not is_ctich_root(tmp_path)


def test_natural_key_orders_numbers() -> None:
    names = ["s10.png", "s2.png", "s1.png", "S3.png"]
    assert sorted(names, key=natural_key) == ["s1.png", "s2.png", "S3.png", "s10.png"]


def test_parse_window() -> None:
    assert parse_window("40,80") == (40.0, 80.0)
    assert parse_window((40, 80)) == (40.0, 80.0)
    for bad in (None, "40", "a,b", (40, 0), (40, -1), "40,80,3"):
        with pytest.raises(InputError):
            parse_window(bad)  # type: ignore[arg-type]


def _save(folder: Path, name: str, arr: np.ndarray, mode: str | None = None) -> None:
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode=mode)
    im.save(folder / name)


def test_read_image_folder_window_and_order(tmp_path: Path) -> None:
    for i, g in [(10, 200), (2, 20), (1, 0)]:
        _save(tmp_path, f"slice{i}.png", np.full((6, 6), g, np.uint8))
    (series,) = read_image_folder(tmp_path, (40, 80))
    assert series.hu.shape == (3, 6, 6)
    np.testing.assert_allclose(series.hu[:, 0, 0], [0.0, 20 * 80 / 255, 200 * 80 / 255], atol=1e-4)
    assert series.source_kind == "images"
    assert series.sop_instance_uids[1] == f"{series.series_instance_uid}-0001"
    assert series.series_instance_uid.startswith("img-")
    assert np.isnan(series.spacing_mm).all()


def test_read_image_folder_needs_window(tmp_path: Path) -> None:
    _save(tmp_path, "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="--window"):
        read_image_folder(tmp_path, None)


def test_read_image_folder_mixed_sizes(tmp_path: Path) -> None:
    _save(tmp_path, "a.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path, "b.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(InputError, match="different sizes"):
        read_image_folder(tmp_path, (40, 80))
    series = read_image_folder(tmp_path, (40, 80), independent=True)
    assert [s.hu.shape for s in series] == [(1, 4, 4), (1, 5, 5)]
    assert len({s.series_instance_uid for s in series}) == 2


def test_read_image_folder_rgb_and_unreadable(tmp_path: Path) -> None:
    _save(tmp_path, "1.png", np.zeros((4, 4), np.uint8))
    _save(tmp_path, "2.png", np.full((4, 4, 3), 255, np.uint8))
    (tmp_path / "3.jpg").write_bytes(b"not an image")
    (series,) = read_image_folder(tmp_path, (40, 80))
    assert series.n_slices == 2
    codes = {w.code for w in series.warnings}
    assert codes == {"converted_to_gray", "skipped_files"}
    np.testing.assert_allclose(series.hu[1], 80.0, atol=1e-4)


def test_read_image_folder_rejects_16bit_and_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no PNG/JPG"):
        read_image_folder(tmp_path, (40, 80))
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="8-bit"):
        read_image_folder(tmp_path, (40, 80))
    with pytest.raises(InputError, match="not a folder"):
        read_image_folder(tmp_path / "missing", (40, 80))


def test_read_image_folder_all_unreadable(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="could be read"):
        read_image_folder(tmp_path, (40, 80))


def test_packaged_demo_study_reads_as_ctich_root() -> None:
    from ichd.data.labels import read_labels
    from ichd.paths import package_resource

    demo = package_resource("resources", "demo")
    assert is_ctich_root(demo) and ctich_patients(demo) == [71]
    series = read_ctich_patient(demo, 71)
    assert series.hu.shape == (29, 650, 650) and not series.warnings
    labels = read_labels(demo / "labels.csv")
    assert labels.index.tolist() == series.sop_instance_uids
    assert int(labels["any"].sum()) == 19
    size = sum(p.stat().st_size for p in demo.rglob("*") if p.is_file())
    assert size < 2_000_000
