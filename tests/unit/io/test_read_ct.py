"""Unit tests for ichd.io.reader.read_ct: dispatch by path kind and the bad-input messages."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ichd.errors import InputError
from ichd.io import read_ct
from ichd.testing.factories import make_ct_series, phantom_hu, write_series


def test_missing_path() -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_ct("/no/such/path/anywhere")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is empty"):
        read_ct(tmp_path)


def test_folder_with_only_other_files(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="holds no DICOM, NIfTI or image files"):
        read_ct(tmp_path)


def test_zip_with_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(InputError, match="holds no DICOM candidates"):
        read_ct(archive)


def test_broken_zip(tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match="not a readable zip archive"):
        read_ct(archive)


def test_single_dicom_file_and_folder_recursion(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "a" / "b" / "c", make_ct_series(3))
    (s,) = read_ct(paths[1])
    assert s.n_slices == 1 and s.source == str(paths[1])
    (s,) = read_ct(tmp_path)
    assert s.n_slices == 3


def test_single_broken_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"\x01\x02garbage")
    with pytest.raises(InputError, match=r"x\.dcm: not a DICOM file"):
        read_ct(bad)


def test_image_folder_needs_window(tmp_path: Path) -> None:
    for k in range(3):
        Image.fromarray(np.full((16, 16), 40 * k, dtype=np.uint8)).save(tmp_path / f"{k}.png")
    with pytest.raises(InputError, match="--window"):
        read_ct(tmp_path)
    (s,) = read_ct(tmp_path, window="40,80")
    assert s.n_slices == 3 and s.source_kind == "images"
    with pytest.raises(InputError, match="single .png image"):
        read_ct(tmp_path / "0.png", window="40,80")


def test_ctich_root_and_patient_folder(tmp_path: Path) -> None:
    for window in ("brain", "bone"):
        folder = tmp_path / window / "049"
        folder.mkdir(parents=True)
        for k in (1, 2):
            Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(folder / f"{k:03d}.jpg")
    (root,) = read_ct(tmp_path)
    (patient,) = read_ct(tmp_path / "brain" / "049")
    assert root.series_instance_uid == patient.series_instance_uid == "ctich-049"
    assert patient.n_slices == 2


def test_nifti_file_and_folder(tmp_path: Path) -> None:
    vol = np.stack([phantom_hu(16, 16, z) for z in range(4)], axis=-1)  # (x, y, z) voxel order
    nib.save(nib.Nifti1Image(vol.astype(np.int16), np.diag([0.5, 0.5, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    (s,) = read_ct(tmp_path / "ct.nii.gz")
    assert s.source_kind == "nifti" and s.n_slices == 4
    (s2,) = read_ct(tmp_path)
    np.testing.assert_array_equal(s.hu, s2.hu)
