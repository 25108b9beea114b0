"""Label readers: every supported layout, attach_scans, and errors that name the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichd.constants import LABELS
from ichd.data.labels import attach_scans, ctich_slice_id, label_matrix, read_label_sources, read_labels
from ichd.errors import InputError

CTICH = """patient,slice,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural,fracture
49,2,1,1,0,0,0,0,1
49,1,0,0,0,0,0,0,0
50,1,1,0,0,0,0,1,0
"""

ORIGINAL = ("\ufeffPatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,"
            "No_Hemorrhage,Fracture_Yes_No\n49,1,0,0,0,0,0,1,0\n49,2,0,0,0,1,0,0,1\n50,1,0,0,0,0,1,0,0\n")


def _write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_ctich_slice_id() -> None:
    assert ctich_slice_id(49, 11) == "ctich-049-011"


def test_ctich_labels(tmp_path: Path) -> None:
    df = read_labels(_write(tmp_path, CTICH))
    assert df.index.name == "slice_id"
    assert list(df.columns) == ["scan_id", "patient_id", "slice_index", *LABELS]
    assert df.index.tolist() == ["ctich-049-001", "ctich-049-002", "ctich-050-001"]
    assert df["slice_index"].tolist() == [0, 1, 0]
    assert df.loc["ctich-049-002", "epidural"] == 1 and df.loc["ctich-050-001", "subdural"] == 1
    assert all(np.issubdtype(df[c].dtype, np.integer) for c in LABELS)


def test_ctich_original_with_bom_matches(tmp_path: Path) -> None:
    a = read_labels(_write(tmp_path, CTICH))
    b = read_labels(_write(tmp_path, ORIGINAL, "orig.csv"))
    pd.testing.assert_frame_equal(a, b)


def test_rsna_long_pivot_and_duplicates(tmp_path: Path) -> None:
    rows = ["ID,Label"]
    for sop, pos in (("ID_aaa", {"any", "subdural"}), ("ID_bbb", set())):
        rows += [f"{sop}_{lab},{int(lab in pos)}" for lab in LABELS]
    rows.append("ID_aaa_any,1")  # RSNA stage 2 repeats rows verbatim
    df = read_labels(_write(tmp_path, "\n".join(rows) + "\n"))
    assert df.index.tolist() == ["ID_aaa", "ID_bbb"]
    assert df.loc["ID_aaa", list(LABELS)].tolist() == [1, 0, 0, 0, 0, 1]
    assert df["scan_id"].isna().all()


def test_rsna_long_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="line"):
        read_labels(_write(tmp_path, "ID,Label\nID_a_any,1\nID_a_bleed,0\n"))
    with pytest.raises(InputError, match="conflicting"):
        read_labels(_write(tmp_path, "ID,Label\n" + "".join(f"ID_a_{lab},0\n" for lab in LABELS) + "ID_a_any,1\n"))
    with pytest.raises(InputError, match="lack"):
        read_labels(_write(tmp_path, "ID,Label\nID_a_any,1\n"))


def test_bad_values_name_the_rows(tmp_path: Path) -> None:
    bad = CTICH.replace("50,1,1,0,0,0,0,1,0", "50,1,2,0,0,0,0,1,0")
    with pytest.raises(InputError, match=r"line\(s\) 4"):
        read_labels(_write(tmp_path, bad))
    with pytest.raises(InputError, match="whole numbers"):
        read_labels(_write(tmp_path, CTICH.replace("50,1,1", "x,1,1")))
    with pytest.raises(InputError, match="appears 2 times"):
        read_labels(_write(tmp_path, CTICH + "50,1,1,0,0,0,0,1,0\n"))


def test_missing_columns_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="lacks column"):
        read_labels(_write(tmp_path, "patient,slice,any\n49,1,0\n"))
    with pytest.raises(InputError, match="not a known label file"):
        read_labels(_write(tmp_path, "a,b\n1,2\n"))
    with pytest.raises(InputError, match="not found"):
        read_labels(tmp_path / "missing.csv")


def test_samples_and_hu_slices_layouts(tmp_path: Path) -> None:
    lab = ",".join(LABELS)
    samples = read_labels(_write(tmp_path, f"file,{lab},sop_instance_uid\nID_x.dcm,1,0,1,0,0,0,ID_x\n", "s.csv"))
    assert samples.index.tolist() == ["ID_x"] and samples.loc["ID_x", "file"] == "ID_x.dcm"
    hu = read_labels(_write(tmp_path, f"file,patient,source_slice,ctich_slice,{lab},fracture\n"
                                      f"dicom/051_20.dcm,51,20,11,1,0,0,0,0,1,0\n", "h.csv"))
    assert hu.index.tolist() == ["ctich-051-011"] and hu.loc["ctich-051-011", "slice_index"] == 10


def test_ichd_table_round_trip(tmp_path: Path) -> None:
    df = read_labels(_write(tmp_path, CTICH))
    path = tmp_path / "ichd.csv"
    df.to_csv(path)
    again = read_labels(path)
    pd.testing.assert_frame_equal(df[list(LABELS)], again[list(LABELS)])
    assert again["scan_id"].tolist() == df["scan_id"].tolist()


def test_attach_scans(tmp_path: Path) -> None:
    lab = ",".join(LABELS)
    labels = read_labels(_write(tmp_path, f"file,{lab},sop_instance_uid\na.dcm,1,0,1,0,0,0,ID_a\n"
                                          f"b.dcm,0,0,0,0,0,0,ID_b\n", "s.csv"))
    slices = pd.DataFrame({"slice_id": ["ID_a", "ID_c"], "scan_id": ["1.2.3", "1.2.4"],
                           "patient_id": ["p1", "p2"], "slice_index": [5, 0], "z_mm": [1.0, 2.0]})
    inner = attach_scans(labels, slices)
    assert inner.index.tolist() == ["ID_a"]
    assert inner.loc["ID_a", ["scan_id", "patient_id", "slice_index"]].tolist() == ["1.2.3", "p1", 5]
    left = attach_scans(labels, slices, how="left")
    assert len(left) == 2 and pd.isna(left.loc["ID_b", "scan_id"])
    with pytest.raises(InputError):
        attach_scans(labels, slices.drop(columns="patient_id"))


def test_label_matrix(tmp_path: Path) -> None:
    df = read_labels(_write(tmp_path, CTICH))
    y = label_matrix(df, ["ctich-050-001"])
    assert y.dtype == np.float32 and y.tolist() == [[1, 0, 0, 0, 0, 1]]
    with pytest.raises(InputError):
        label_matrix(df, ["nope"])


def test_slices_from_headers_orders_and_pseudonymises() -> None:
    import hashlib

    from ichd.data.labels import slices_from_headers

    headers = pd.DataFrame({
        "SOPInstanceUID": ["ID_c", "ID_a", "ID_b"], "SeriesInstanceUID": ["S1", "S1", "S1"],
        "PatientID": ["ID_pat"] * 3,
        "ImagePositionPatient": ["['-125', '-8', '190.5']", "[-125, -8, 180.5]", "[-125, -8, 185.5]"],
    })
    table = slices_from_headers(headers)
    assert table["slice_id"].tolist() == ["ID_a", "ID_b", "ID_c"]
    assert table["slice_index"].tolist() == [0, 1, 2]
    assert table["patient_id"].unique().tolist() == [hashlib.sha1(b"ID_pat").hexdigest()[:12]]
    assert "PatientID" not in table.columns
    with pytest.raises(InputError, match="SeriesInstanceUID"):
        slices_from_headers(headers.drop(columns="SeriesInstanceUID"))
    with pytest.raises(InputError, match="positions"):
        slices_from_headers(headers.assign(ImagePositionPatient="junk"))


RSNA_SERIES = """image_id,patient_id,study_uid,series_uid,file,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural,label_source,slice_index
ID_a1,ID_p1,ID_s1,ID_ser1,dicom/ID_ser1/ID_a1.dcm,0,0,0,0,0,0,riku,0
ID_a2,ID_p1,ID_s1,ID_ser1,dicom/ID_ser1/ID_a2.dcm,,,,,,,missing,1
ID_a3,ID_p1,ID_s1,ID_ser1,dicom/ID_ser1/ID_a3.dcm,1,0,1,0,0,0,pooled,2
ID_b1,ID_p2,ID_s2,ID_ser2,dicom/ID_ser2/ID_b1.dcm,0,0,0,0,0,0,derived_negative,0
"""


def test_rsna_series_labels_keep_missing_as_nan(tmp_path: Path) -> None:
    df = read_labels(_write(tmp_path, RSNA_SERIES))
    assert df.index.tolist() == ["ID_a1", "ID_a2", "ID_a3", "ID_b1"]
    import hashlib

    assert df.loc["ID_a3", "scan_id"] == "ID_ser1"
    assert df.loc["ID_b1", "patient_id"] == hashlib.sha1(b"ID_p2").hexdigest()[:12]  # ichd's DICOM pseudonym
    assert df["slice_index"].tolist() == [0, 1, 2, 0]
    assert df.loc["ID_a2", list(LABELS)].isna().all()  # missing, not 0
    assert df.loc["ID_a3", "intraparenchymal"] == 1 and df.loc["ID_a1", "any"] == 0
    assert df.loc["ID_b1", "label_source"] == "derived_negative"
    with pytest.raises(InputError, match="slice"):
        label_matrix(df)  # missing labels need allow_missing
    y = label_matrix(df, ["ID_a2", "ID_a3"], allow_missing=True)
    assert np.isnan(y[0]).all() and y[1, LABELS.index("intraparenchymal")] == 1
    with pytest.raises(InputError, match="not in the label table"):
        label_matrix(df, ["ID_zz"], allow_missing=True)


def test_rsna_series_rejects_other_values(tmp_path: Path) -> None:
    bad = RSNA_SERIES.replace("ID_a3.dcm,1,0,1", "ID_a3.dcm,2,0,1")
    with pytest.raises(InputError, match="line"):
        read_labels(_write(tmp_path, bad))


def test_read_label_sources_multi_source_table(tmp_path: Path) -> None:
    (tmp_path / "ct-ich").mkdir()
    (tmp_path / "rsna-series").mkdir()
    a = _write(tmp_path / "ct-ich", CTICH)
    b = _write(tmp_path / "rsna-series", RSNA_SERIES)
    table = read_label_sources([a, b])
    assert table["source"].value_counts().to_dict() == {"rsna-series": 4, "ct-ich": 3}
    assert table.loc["ctich-049-002", "source"] == "ct-ich"
    assert table["any"].dtype == np.float64 and np.isnan(table.loc["ID_a2", "any"])
    named = read_label_sources([a, b], names=["jpg", "dicom"])
    assert set(named["source"]) == {"jpg", "dicom"}
    with pytest.raises(InputError, match="same source name"):
        read_label_sources([a, a])
    with pytest.raises(InputError, match="several label files"):
        read_label_sources([a, a], names=["x", "y"])
    with pytest.raises(InputError, match="source name"):
        read_label_sources([a, b], names=["x"])
