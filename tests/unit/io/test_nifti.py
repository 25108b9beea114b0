"""Unit tests for ichd.io.nifti: orientation to (z, y, x) L/P/S, spacing, UIDs, HU handling."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichd.constants import AIR_HU
from ichd.errors import InputError
from ichd.io import read_ct
from ichd.io.nifti import read_nifti


def _volume() -> np.ndarray:
    """(x, y, z) int16 volume whose voxel value encodes its index: 1000*z + 10*y + x (x, y < 10)."""
    x, y, z = np.meshgrid(np.arange(6), np.arange(5), np.arange(4), indexing="ij")
    return (1000 * z + 10 * y + x).astype(np.int16)


def test_ras_volume_is_flipped_to_lps_display_layout(tmp_path: Path) -> None:
    # NIfTI world space is RAS+: this affine makes i run towards the patient's right, j anterior, k superior
    affine = np.diag([0.5, 0.8, 2.0, 1.0])
    nib.save(nib.Nifti1Image(_volume(), affine), tmp_path / "ras.nii")
    s = read_nifti(tmp_path / "ras.nii")
    assert s.hu.shape == (4, 5, 6)
    assert s.spacing_mm == pytest.approx((2.0, 0.8, 0.5))
    # columns must run to the patient's left (i reversed), rows to posterior (j reversed), z to superior
    assert s.hu[0, 0, 0] == 1000 * 0 + 10 * 4 + 5
    assert s.hu[3, 4, 5] == 1000 * 3 + 10 * 0 + 0
    np.testing.assert_allclose(np.diff(s.positions_mm), 2.0)
    assert s.tilt_deg == 0.0 and s.warnings[0].code == "not_hu"  # index values are not HU


def test_lps_volume_is_unchanged_and_uids_are_stable(tmp_path: Path) -> None:
    affine = np.diag([-0.5, -0.5, 2.0, 1.0])  # i runs to the patient's left, j posterior, k superior
    vol = _volume().astype(np.float32) - 1000.0
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "lps.nii.gz")
    a = read_nifti(tmp_path / "lps.nii.gz")
    b = read_nifti(tmp_path / "lps.nii.gz")
    np.testing.assert_array_equal(a.hu, np.transpose(vol, (2, 1, 0)))
    assert a.series_instance_uid == b.series_instance_uid and a.series_instance_uid.startswith("2.25.")
    assert a.sop_instance_uids[1] == f"{a.series_instance_uid}-0001"


def test_scaling_and_out_of_fov(tmp_path: Path) -> None:
    vol = np.full((4, 4, 2), 0, dtype=np.int16)
    vol[0, 0, 0] = -1000  # with slope 1, intercept -1024 -> -2024 HU: out of FOV
    img = nib.Nifti1Image(vol, np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, tmp_path / "s.nii")
    s = read_nifti(tmp_path / "s.nii")
    assert s.hu.max() == -1024.0
    assert (s.hu == AIR_HU).all()


def test_bad_nifti_inputs(tmp_path: Path) -> None:
    (tmp_path / "junk.nii").write_bytes(b"not nifti")
    with pytest.raises(InputError, match="not a readable NIfTI"):
        read_nifti(tmp_path / "junk.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), dtype=np.int16), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(InputError, match="expected 3-D"):
        read_nifti(tmp_path / "4d.nii")


def test_oblique_affine_reports_tilt(tmp_path: Path) -> None:
    t = np.radians(10.0)
    affine = np.eye(4)
    affine[:3, 1] = [0, np.cos(t), np.sin(t)]
    affine[:3, 2] = [0, -np.sin(t), np.cos(t)]
    nib.save(nib.Nifti1Image(np.full((4, 4, 3), -1000, dtype=np.int16), affine), tmp_path / "o.nii")
    s = read_nifti(tmp_path / "o.nii")
    assert s.tilt_deg == pytest.approx(10.0, abs=1e-3)
    assert [w.code for w in s.warnings] == ["gantry_tilt"]


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"])
def test_write_nifti_round_trips_a_dicom_series(tmp_path: Path, name: str) -> None:
    import nibabel as nib

    from ichd.io.nifti import write_nifti
    from ichd.testing.factories import make_ct_series, write_series

    write_series(tmp_path / "dicom", make_ct_series(5, spacing=2.5))
    (series,) = read_ct(tmp_path / "dicom")
    out = write_nifti(series, tmp_path / name)
    image = nib.load(str(out))
    assert "".join(nib.orientations.aff2axcodes(image.affine)) == "LPS"
    assert image.get_data_dtype() == np.int16  # integer HU are stored exactly
    back = read_ct(out)[0]
    np.testing.assert_array_equal(back.hu, series.hu)
    assert back.spacing_mm == pytest.approx(series.spacing_mm)
    assert not list(tmp_path.glob(".*part*"))  # written atomically, nothing left behind


def test_write_nifti_refuses_other_suffixes(tmp_path: Path) -> None:
    from ichd.io.nifti import write_nifti
    from ichd.testing.factories import make_ct_series, write_series

    write_series(tmp_path / "dicom", make_ct_series(3))
    (series,) = read_ct(tmp_path / "dicom")
    with pytest.raises(InputError, match=r"\.nii or \.nii\.gz"):
        write_nifti(series, tmp_path / "scan.img")
