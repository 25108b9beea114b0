"""Read slice-level hemorrhage labels from the supported label files into one table.

Every reader returns the same layout: a :class:`pandas.DataFrame` indexed by ``slice_id`` with columns
``scan_id``, ``patient_id``, ``slice_index`` followed by one 0/1 ``int`` column per label in
:data:`ichd.constants.LABELS` order. Supported files (detected from their header):

* CT-ICH ``labels.csv`` (``patient,slice,any,...,subdural[,fracture]``; ``fracture`` is dropped);
* the CT-ICH source file ``hemorrhage_diagnosis_original.csv`` (UTF-8 BOM, ``PatientNumber,SliceNumber,...,
  No_Hemorrhage,Fracture_Yes_No``; ``any = 1 - No_Hemorrhage``);
* the hu-slices ``labels.csv`` (``file,...,patient,ctich_slice,...``; rows get the CT-ICH slice ids of the matched
  JPG slices, and keep ``file``);
* RSNA ``stage_2_train.csv`` (long format ``ID,Label`` with ``ID_<sop>_<subtype>``; pivoted); scan/patient ids
  are unknown (NaN) until :func:`attach_scans` takes them from a cache's ``slices.csv``;
* the rsna-samples ``labels.csv`` (``file,any,...,sop_instance_uid``), ids attached the same way;
* an ichd labels table (``slice_id,scan_id,patient_id,slice_index,any,...``), as written by the tools;
* the rsna-series ``labels.csv`` (``image_id,patient_id,study_uid,series_uid,file,any,...,label_source,
  slice_index``): whole RSNA series with scan (= series UID) and patient ids (pseudonymised like every DICOM
  PatientID in ichd: ``sha1(PatientID)[:12]``); **empty label cells are missing
  labels** and become ``NaN`` (the label columns are then float), never 0.

Several label files (one per data source) are read into one table with :func:`read_label_sources`, which adds a
``source`` column (default: the name of the folder holding each file, e.g. ``ct-ich``, ``rsna-series``). A
missing label (``NaN``) is masked out of the training loss (:class:`ichd.training.losses.WeightedBCEWithLogits`)
and of the metrics (:mod:`ichd.evaluation.metrics`).

CT-ICH ids follow docs/architecture.md: slice ``ctich-049-011``, scan and patient ``ctich-049``; ``slice_index``
is the slice's rank within its patient (0 = most inferior), which equals the reader's order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ichd.constants import LABELS
from ichd.errors import InputError
from ichd.io.images import ctich_scan_id, ctich_slice_id
from ichd.utils.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "ID_COLUMNS",
    "attach_scans",
    "ctich_scan_id",
    "ctich_slice_id",
    "label_matrix",
    "read_label_sources",
    "read_labels",
    "rsna_long_to_wide",
    "slices_from_headers",
]

ID_COLUMNS: tuple[str, ...] = ("scan_id", "patient_id", "slice_index")

_CTICH_ORIGINAL = {
    "Epidural": "epidural", "Intraparenchymal": "intraparenchymal", "Intraventricular": "intraventricular",
    "Subarachnoid": "subarachnoid", "Subdural": "subdural",
}


def _rows_text(path: Path, idx: Sequence[int], limit: int = 8) -> str:
    lines = [str(int(i) + 2) for i in list(idx)[:limit]]  # +2: header line and 1-based numbering
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"{path} line(s) {', '.join(lines)}{more}"


def _binary(df: pd.DataFrame, columns: Sequence[str], path: Path, *, allow_missing: bool = False
            ) -> pd.DataFrame:
    """Check that ``columns`` hold only 0/1 (ints, floats or strings "0"/"1"); return them as int64.

    With ``allow_missing`` empty cells are missing labels: they become ``NaN`` and the columns float64."""
    out = {}
    for c in columns:
        blank = df[c].astype(str).str.strip() == "" if allow_missing else pd.Series(False, index=df.index)
        values = pd.to_numeric(df[c].where(~blank, None), errors="coerce")
        bad = np.flatnonzero((~values.isin([0, 1]) & ~blank).to_numpy())
        if len(bad):
            shown = ", ".join(repr(v) for v in df[c].iloc[bad[:3]].tolist())
            raise InputError(f"label column {c!r} must hold 0 or 1; found {shown} at {_rows_text(path, bad)}",
                             hint="fix or remove those rows" + ("" if allow_missing else
                                                                " (this file format has no missing labels)"))
        out[c] = values.astype(np.float64 if allow_missing else np.int64).to_numpy()
    return pd.DataFrame(out, index=df.index)


def _require(df: pd.DataFrame, columns: Sequence[str], path: Path, kind: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: looks like a {kind} label file but lacks column(s) {missing}",
                         hint=f"found columns {list(df.columns)}")


def _integers(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = np.flatnonzero((values.isna() | (values % 1 != 0)).to_numpy())
    if len(bad):
        raise InputError(f"column {column!r} must hold whole numbers; bad value(s) at {_rows_text(path, bad)}",
                         hint="fix or remove those rows")
    return values.astype(np.int64).to_numpy()


def _finish(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Order columns, check unique slice ids, set the index."""
    dup = frame["slice_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        first = frame["slice_id"][dup].iloc[0]
        raise InputError(f"{path}: slice {first!r} appears {int((frame['slice_id'] == first).sum())} times "
                         f"({int(dup.sum())} rows with repeated slice ids)", hint="keep one row per slice")
    extra = [c for c in frame.columns if c not in ("slice_id", *ID_COLUMNS, *LABELS)]
    frame = frame[["slice_id", *ID_COLUMNS, *LABELS, *extra]].set_index("slice_id")
    frame.index.name = "slice_id"
    return frame


def _ctich_frame(patients: np.ndarray, slices: np.ndarray, labels: pd.DataFrame, path: Path) -> pd.DataFrame:
    frame = pd.DataFrame({
        "slice_id": [ctich_slice_id(p, s) for p, s in zip(patients, slices)],
        "scan_id": [ctich_scan_id(p) for p in patients],
        "patient_id": [ctich_scan_id(p) for p in patients],
        "_slice": slices,
    })
    frame = pd.concat([frame, labels.reset_index(drop=True)], axis=1)
    frame["slice_index"] = frame.groupby("scan_id")["_slice"].rank(method="first").astype(np.int64) - 1
    frame = frame.sort_values(["scan_id", "slice_index"]).drop(columns="_slice")
    return _finish(frame, path)


def _read_ctich(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    _require(df, ["patient", "slice", *LABELS], path, "CT-ICH")
    return _ctich_frame(_integers(df, "patient", path), _integers(df, "slice", path),
                        _binary(df, LABELS, path), path)


def _read_ctich_original(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    _require(df, ["PatientNumber", "SliceNumber", "No_Hemorrhage", *_CTICH_ORIGINAL], path, "CT-ICH original")
    src = _binary(df, ["No_Hemorrhage", *_CTICH_ORIGINAL], path)
    labels = pd.DataFrame({"any": 1 - src["No_Hemorrhage"]})
    for col, name in _CTICH_ORIGINAL.items():
        labels[name] = src[col]
    labels = labels[list(LABELS)].astype(np.int64)
    return _ctich_frame(_integers(df, "PatientNumber", path), _integers(df, "SliceNumber", path), labels, path)


def _read_hu_slices(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    _require(df, ["file", "patient", "ctich_slice", *LABELS], path, "hu-slices")
    patients = _integers(df, "patient", path)
    slices = _integers(df, "ctich_slice", path)
    frame = pd.DataFrame({
        "slice_id": [ctich_slice_id(p, s) for p, s in zip(patients, slices)],
        "scan_id": [ctich_scan_id(p) for p in patients],
        "patient_id": [ctich_scan_id(p) for p in patients],
        # position within the full CT-ICH scan (its slices are numbered 1..N without gaps)
        "slice_index": slices - 1,
        "file": df["file"].astype(str).to_numpy(),
    })
    frame = pd.concat([frame, _binary(df, LABELS, path).reset_index(drop=True)], axis=1)
    return _finish(frame, path)


def _unknown_ids(slice_ids: Sequence[str]) -> pd.DataFrame:
    n = len(slice_ids)
    return pd.DataFrame({"slice_id": list(slice_ids), "scan_id": pd.Series([None] * n, dtype=object),
                         "patient_id": pd.Series([None] * n, dtype=object),
                         "slice_index": pd.Series([pd.NA] * n, dtype="Int64")})


def rsna_long_to_wide(ids: pd.Series, values: pd.Series, source: str) -> pd.DataFrame:
    """Pivot RSNA long-format rows (``ID_<SOPInstanceUID>_<subtype>``, value) into one row per slice.

    Shared by the label reader (0/1 values) and the RSNA submission reader of :mod:`ichd.evaluation.io`
    (probabilities); the caller checks the values first. Rows repeated verbatim are dropped (RSNA's
    ``stage_2_train.csv`` repeats some); malformed IDs, conflicting repeats and slices lacking one of the six
    subtype rows raise :class:`InputError` naming the lines (line numbers assume a header line and the file's
    row order, i.e. a default ``RangeIndex``).

    Returns a float64 frame indexed by ``slice_id`` (the ``ID_<sop>`` part) with the :data:`LABELS` columns.
    """
    text = ids.fillna("").astype(str).str.strip()
    parts = text.str.rpartition("_")
    sop, subtype = parts[0], parts[2]
    bad = np.flatnonzero(((sop == "") | ~subtype.isin(LABELS)).to_numpy())
    if len(bad):
        shown = ", ".join(f"line {i + 2} ({text.iloc[i]!r})" for i in bad[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise InputError(f"{source}: {len(bad)} ID(s) are not of the form ID_<SOPInstanceUID>_<subtype>: "
                         f"{shown}{more}", hint=f"subtypes: {', '.join(LABELS)}")
    long = pd.DataFrame({"slice_id": sop.to_numpy(), "label": subtype.to_numpy(),
                         "value": np.asarray(values, dtype=np.float64), "line": np.arange(len(text)) + 2})
    dups = long.duplicated(["slice_id", "label"], keep=False)
    if dups.any():
        conflict = long[dups].groupby(["slice_id", "label"])["value"].nunique()
        conflict = conflict[conflict > 1]
        if len(conflict):
            sid, lab = conflict.index[0]
            lines = long.loc[(long["slice_id"] == sid) & (long["label"] == lab), "line"].tolist()
            raise InputError(f"{source}: conflicting values for {len(conflict)} (slice, subtype) pair(s), e.g. "
                             f"{sid}_{lab} at lines {', '.join(map(str, lines))}",
                             hint="keep one row per slice and subtype")
        long = long.drop_duplicates(["slice_id", "label"])
    wide = long.pivot(index="slice_id", columns="label", values="value").reindex(columns=list(LABELS))
    incomplete = wide.isna().any(axis=1)
    if incomplete.any():
        rows = [f"{sid} (missing {', '.join(lab for lab in LABELS if pd.isna(wide.at[sid, lab]))})"
                for sid in wide.index[incomplete][:8]]
        more = f" and {int(incomplete.sum()) - 8} more" if int(incomplete.sum()) > 8 else ""
        raise InputError(f"{source}: {int(incomplete.sum())} slice(s) lack some of the 6 subtype rows: "
                         f"{', '.join(rows)}{more}", hint="each ID_<sop> needs one row per subtype")
    wide.index = wide.index.astype(str)
    wide.index.name = "slice_id"
    wide.columns.name = None
    return wide


def _read_rsna_long(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    values = _binary(df, ["Label"], path)["Label"]
    wide = rsna_long_to_wide(df["ID"], values, str(path)).astype(np.int64)
    frame = pd.concat([_unknown_ids(list(wide.index)), wide.reset_index(drop=True)], axis=1)
    return _finish(frame, path)


def _read_rsna_samples(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    _require(df, ["file", "sop_instance_uid", *LABELS], path, "rsna-samples")
    frame = pd.concat([_unknown_ids(df["sop_instance_uid"].astype(str).tolist()),
                       _binary(df, LABELS, path).reset_index(drop=True)], axis=1)
    frame["file"] = df["file"].astype(str).to_numpy()
    return _finish(frame, path)


def _read_ichd(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    _require(df, ["slice_id", *ID_COLUMNS, *LABELS], path, "ichd labels")
    frame = df[["slice_id", *ID_COLUMNS]].copy()
    frame["slice_id"] = frame["slice_id"].astype(str)
    frame["slice_index"] = pd.to_numeric(frame["slice_index"], errors="coerce").astype("Int64")
    frame = pd.concat([frame.reset_index(drop=True), _binary(df, LABELS, path).reset_index(drop=True)], axis=1)
    return _finish(frame, path)


def _read_rsna_series(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    _require(df, ["image_id", "patient_id", "series_uid", "slice_index", *LABELS], path, "rsna-series")
    frame = pd.DataFrame({
        "slice_id": df["image_id"].astype(str).to_numpy(),
        "scan_id": df["series_uid"].astype(str).to_numpy(),
        # the pseudonym ichd gives DICOM patients (sha1(PatientID)[:12]), so these ids match the cache's
        "patient_id": df["patient_id"].astype(str).map(_pseudonym).to_numpy(),
        "slice_index": _integers(df, "slice_index", path),
    })
    labels = _binary(df, LABELS, path, allow_missing=True).reset_index(drop=True)
    partial = labels.isna().any(axis=1) & labels.notna().any(axis=1)
    if partial.any():
        log.info("%s: %d slice(s) have some but not all labels", path, int(partial.sum()))
    frame = pd.concat([frame, labels], axis=1)
    if "label_source" in df.columns:
        frame["label_source"] = df["label_source"].astype(str).to_numpy()
    if labels.isna().all(axis=1).any():
        log.info("%s: %d slice(s) have missing labels (masked out of loss and metrics)", path,
                 int(labels.isna().all(axis=1).sum()))
    return _finish(frame, path)


def read_label_sources(paths: Sequence[str | os.PathLike[str]], names: Sequence[str] | None = None
                       ) -> pd.DataFrame:
    """Read several label files (one per data source) into one table with a ``source`` column.

    ``names`` default to the name of the folder holding each file (``../ct-ich/labels.csv`` -> ``ct-ich``).
    A slice id found in two files is an :class:`InputError`; so are two files with the same source name.
    The label columns are float64 when any file has missing labels (``NaN``), int64 otherwise.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no label file given", hint="pass at least one labels CSV")
    names = [p.resolve().parent.name for p in paths] if names is None else [str(n) for n in names]
    if len(names) != len(paths):
        raise InputError(f"{len(names)} source name(s) for {len(paths)} label file(s)")
    dup_names = sorted({n for n in names if names.count(n) > 1})
    if dup_names:
        raise InputError(f"two label files have the same source name {dup_names[0]!r}",
                         hint="name the sources explicitly (data.sources in the training config)")
    frames = []
    for path, name in zip(paths, names):
        frame = read_labels(path).copy()
        frame["source"] = name
        frames.append(frame)
    table = pd.concat(frames, axis=0)
    dup = table.index.duplicated(keep=False)
    if dup.any():
        first = table.index[dup][0]
        owners = sorted(set(table.loc[[first], "source"]))
        raise InputError(f"slice {first!r} appears in several label files ({', '.join(owners)}); "
                         f"{int(dup.sum())} rows share slice ids", hint="each slice must come from one source")
    if any(table[c].isna().any() for c in LABELS):
        for c in LABELS:
            table[c] = table[c].astype(np.float64)
    return table


def read_labels(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a label file (format detected from its columns; see the module doc) into the common table.

    Raises :class:`InputError` naming the file and rows when the file is missing, of an unknown layout, lacks
    columns, or holds values other than 0/1.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label file {str(path)!r} not found", hint="pass an existing CSV file")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"cannot parse label file {str(path)!r}: {e}", hint="it must be a CSV file") from e
    df.columns = [str(c).strip() for c in df.columns]
    for c in df.columns:
        df[c] = df[c].str.strip()
    cols = set(df.columns)
    if {"slice_id", "scan_id"} <= cols:
        return _read_ichd(df, path)
    if {"image_id", "series_uid", "slice_index"} <= cols:
        return _read_rsna_series(df, path)
    if {"ID", "Label"} <= cols:
        return _read_rsna_long(df, path)
    if {"PatientNumber", "SliceNumber"} <= cols:
        return _read_ctich_original(df, path)
    if {"ctich_slice", "file"} <= cols:
        return _read_hu_slices(df, path)
    if {"sop_instance_uid", "file"} <= cols:
        return _read_rsna_samples(df, path)
    if {"patient", "slice"} <= cols:
        return _read_ctich(df, path)
    raise InputError(f"{str(path)!r} is not a known label file (columns: {list(df.columns)[:12]})",
                     hint="supported: CT-ICH labels.csv or hemorrhage_diagnosis_original.csv, RSNA "
                          "stage_2_train.csv (ID,Label), rsna-series/rsna-samples/hu-slices labels.csv, "
                          "ichd labels tables")


def _pseudonym(value: str) -> str:
    # the same pseudonym ichd.io.dicom stores as meta["patient_id"] (docs/architecture.md: sha1(PatientID)[:12])
    return hashlib.sha1(str(value).encode("utf-8")).hexdigest()[:12]


def slices_from_headers(headers: pd.DataFrame) -> pd.DataFrame:
    """Turn a DICOM header table (one row per slice; e.g. the RSNA metadata CSVs) into an ichd slice table.

    Needs columns ``SOPInstanceUID`` and ``SeriesInstanceUID``; uses ``PatientID`` (pseudonymised as
    ``sha1(PatientID)[:12]``, as the DICOM reader does) or else ``StudyInstanceUID`` as ``patient_id``, and orders
    slices within a series by ``z_mm`` from ``ImagePositionPatient`` (a ``[x, y, z]`` string or list) or an
    ``ImagePositionPatient_2`` column. The raw ``PatientID`` is not kept.
    """
    required = ["SOPInstanceUID", "SeriesInstanceUID"]
    missing = [c for c in required if c not in headers.columns]
    if missing:
        raise InputError(f"DICOM header table lacks column(s) {missing}", hint=f"found {list(headers.columns)[:12]}")
    if "PatientID" in headers.columns:
        patient = headers["PatientID"].astype(str).map(_pseudonym)
    elif "StudyInstanceUID" in headers.columns:
        patient = headers["StudyInstanceUID"].astype(str)
    else:
        raise InputError("DICOM header table needs PatientID or StudyInstanceUID to group slices by patient")
    if "ImagePositionPatient_2" in headers.columns:
        z = pd.to_numeric(headers["ImagePositionPatient_2"], errors="coerce")
    elif "ImagePositionPatient" in headers.columns:
        def third(v: object) -> float:
            parts = v if isinstance(v, (list, tuple)) else str(v).strip("[]() ").replace("'", "").split(",")
            try:
                return float(parts[2])
            except (IndexError, ValueError):
                return float("nan")
        z = headers["ImagePositionPatient"].map(third)
    else:
        raise InputError("DICOM header table needs ImagePositionPatient (or ImagePositionPatient_2) to order slices")
    bad = np.flatnonzero(z.isna().to_numpy())
    if len(bad):
        raise InputError(f"unreadable slice positions in {len(bad)} header row(s), e.g. row {int(bad[0]) + 2}")
    table = pd.DataFrame({"slice_id": headers["SOPInstanceUID"].astype(str).to_numpy(),
                          "scan_id": headers["SeriesInstanceUID"].astype(str).to_numpy(),
                          "patient_id": patient.to_numpy(), "z_mm": z.astype(float).to_numpy()})
    table["slice_index"] = (table.groupby("scan_id")["z_mm"].rank(method="first").astype(np.int64) - 1)
    return table.sort_values(["scan_id", "slice_index"]).reset_index(drop=True)[
        ["slice_id", "scan_id", "patient_id", "slice_index", "z_mm"]]


def attach_scans(labels: pd.DataFrame, slices: pd.DataFrame, *, how: str = "inner") -> pd.DataFrame:
    """Fill ``scan_id``, ``patient_id`` and ``slice_index`` of ``labels`` from a slice table (a cache's
    ``slices.csv`` / ``Cache.slices``, indexed by or holding ``slice_id``; or :func:`slices_from_headers` of a
    DICOM header table).

    ``how="inner"`` keeps only labelled slices found in ``slices`` (the count dropped is logged);
    ``how="left"`` keeps every label row (ids stay NaN where unknown).
    """
    if how not in ("inner", "left"):
        raise ValueError(f"how must be 'inner' or 'left', got {how!r}")
    table = slices
    if "slice_id" in table.columns:
        table = table.set_index("slice_id", drop=True)
    missing = [c for c in ID_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"slice table lacks column(s) {missing}", hint="pass a cache's slices.csv")
    table = table[~table.index.duplicated()]
    known = labels.index.isin(table.index)
    out = labels.copy()
    if how == "inner":
        dropped = int((~known).sum())
        if dropped:
            log.warning("%d labelled slice(s) are not in the slice table and were dropped", dropped)
        out = out[known]
    ids = table.reindex(out.index)
    for c in ID_COLUMNS:
        have = ids[c].notna()
        if c == "slice_index":
            merged = out[c].astype("Int64")
            merged[have.to_numpy()] = ids.loc[have, c].astype("Int64")
            out[c] = merged
        else:
            out[c] = out[c].astype(object)
            out.loc[have.to_numpy(), c] = ids.loc[have, c].astype(str).to_numpy()
    return out


def label_matrix(labels: pd.DataFrame, slice_ids: Sequence[str] | None = None, *,
                 allow_missing: bool = False) -> np.ndarray:
    """``(n, 6)`` float32 targets in :data:`LABELS` order for ``slice_ids`` (all rows when None).

    A slice id absent from ``labels`` is always an :class:`InputError`. Missing labels (``NaN`` cells of
    present rows) are kept as ``NaN`` with ``allow_missing`` (the metrics and the loss mask them), else an error.
    """
    frame = labels if slice_ids is None else labels.reindex(list(slice_ids))
    if slice_ids is not None:
        absent = [s for s in slice_ids if s not in labels.index]
        if absent:
            raise InputError(f"{len(absent)} slice(s) are not in the label table, e.g. {absent[0]!r}",
                             hint="use slices present in the label table")
    if not allow_missing and frame[list(LABELS)].isna().any().any():
        missing = frame.index[frame[list(LABELS)].isna().any(axis=1)]
        raise InputError(f"{len(missing)} slice(s) have no labels, e.g. {missing[0]!r}",
                         hint="use slices present in the label table")
    return frame[list(LABELS)].to_numpy(dtype=np.float32)


def scan_row_groups(scan_ids: np.ndarray, slice_index: np.ndarray) -> list[np.ndarray]:
    """Row indices of each scan of a slice table (scans in id order), each sorted by ``slice_index``
    (inferior -> superior)."""
    order = np.lexsort((np.asarray(slice_index), np.asarray(scan_ids)))
    ids = np.asarray(scan_ids)[order]
    cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    return np.split(order, cuts)
