"""CT-ICH on the real shared data: HU reconstruction, known issues, labels and folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichd.constants import LABELS
from ichd.data.folds import add_fold_column, patient_folds
from ichd.data.labels import read_labels
from ichd.io.images import ctich_patients, is_ctich_root, read_ctich_patient


@pytest.fixture(scope="module")
def ctich(data_root: Path) -> Path:
    root = data_root / "ct-ich"
    if not root.is_dir():
        pytest.skip("ct-ich not in the data folder")
    return root


def test_root_and_patients(ctich: Path) -> None:
    assert is_ctich_root(ctich)
    patients = ctich_patients(ctich)
    assert len(patients) == 82 and patients[0] == 49 and patients[-1] == 130


def test_patient_049_hu(ctich: Path) -> None:
    s = read_ctich_patient(ctich, 49)
    assert s.hu.shape == (33, 650, 650) and not s.warnings
    mid = s.hu[len(s.hu) // 2]
    centre = mid[225:425, 225:425]
    tissue = centre[(centre > 0) & (centre < 80)]
    assert tissue.size > 10_000
    assert 20 <= float(np.median(tissue)) <= 45  # grey/white matter
    assert float(np.percentile(mid, 5)) < -800  # air comes from the bone window, not the brain window's floor
    assert float(mid.max()) > 1000  # skull


def test_consistent_with_real_hu_slice(ctich: Path, data_root: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from scipy import ndimage as ndi
    from skimage.transform import resize

    ref = np.rot90(pydicom.dcmread(data_root / "hu-slices" / "dicom" / "071_14.dcm").pixel_array
                   .astype(np.float32), 1)
    s = read_ctich_patient(ctich, 71)
    ours = resize(s.hu[13], ref.shape, order=1, anti_aliasing=True, preserve_range=True)
    brain = ndi.binary_erosion((ref > 0) & (ref < 80), iterations=5)
    assert brain.sum() > 20_000
    assert np.corrcoef(ours[brain], ref[brain])[0, 1] > 0.85
    assert float(np.abs(ours[brain] - ref[brain]).mean()) < 5.0
    soft_ours, soft_ref = np.clip(ours, -150, 230), np.clip(ref, -150, 230)
    assert np.corrcoef(soft_ours.ravel(), soft_ref.ravel())[0, 1] > 0.95


def test_known_issues(ctich: Path) -> None:
    s81 = read_ctich_patient(ctich, 81)
    codes = [w.code for w in s81.warnings]
    assert "bone_offset" in codes and s81.meta["bone_offset"] == 2
    s84 = read_ctich_patient(ctich, 84)
    missing = [w for w in s84.warnings if w.code == "missing_bone_window"]
    assert len(missing) == 1 and missing[0].files[0].endswith("036.jpg")


def test_labels_match_reader_ids(ctich: Path) -> None:
    labels = read_labels(ctich / "labels.csv")
    assert len(labels) == 2501 and int(labels["any"].sum()) == 318
    original = read_labels(ctich / "hemorrhage_diagnosis_original.csv")
    assert (original[list(LABELS)] == labels[list(LABELS)]).all().all()
    s = read_ctich_patient(ctich, 49)
    rows = labels[labels["scan_id"] == "ctich-049"].sort_values("slice_index")
    assert rows.index.tolist() == s.sop_instance_uids


def test_real_folds_patient_level(ctich: Path) -> None:
    labels = read_labels(ctich / "labels.csv")
    folds = patient_folds(labels, k=5, seed=0)
    assert len(folds) == 82
    table = add_fold_column(labels, folds)
    assert (table.groupby("patient_id")["fold"].nunique() == 1).all()
    per_fold = table.groupby("fold")[["any", "epidural", "intraparenchymal"]].sum()
    assert (per_fold > 0).all().all()


def test_other_label_files(data_root: Path) -> None:
    hu = read_labels(data_root / "hu-slices" / "labels.csv")
    assert len(hu) == 26 and hu["any"].all()
    samples = read_labels(data_root / "rsna-samples" / "labels.csv")
    assert len(samples) == 10 and int(samples["any"].sum()) == 7
    long = read_labels(data_root / "rsna-samples" / "source_dcm_test.csv")
    for sop in long.index:
        assert (long.loc[sop, list(LABELS)] == samples.loc[sop, list(LABELS)]).all()
