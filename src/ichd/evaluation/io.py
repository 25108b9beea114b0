"""Reading what ``ichd evaluate`` compares: prediction files, labels, scan maps, and lining them up.

Prediction formats (detected from the file, see :func:`read_predictions`):

* **ichd predictions CSV** (``docs/architecture.md``): one row per slice, ``slice_id`` plus one probability
  column per label (``any, epidural, ...``); ``scan_id``, ``patient_id``, ``slice_index`` and ``fold`` are used
  when present.
* **predict JSON** (written by ``ichd predict``): ``{"series_instance_uid": ..., "slices": [{"index",
  "sop_instance_uid", "z_mm", "probabilities": {label: p}}], "scan": {label: p}}``; a file, a list of such
  objects in one file, or a folder of ``*.json`` files. The ``scan`` block is the model's own scan output.
* **RSNA submission CSV**: ``ID,Label`` with ``ID = ID_<SOPInstanceUID>_<subtype>`` (slice id =
  everything before the last ``_``).

The model's scan-level output can also come from a separate CSV (``scan_id`` + label columns, e.g.
``oof_scans.csv`` of ``ichd train seq``; :func:`read_scan_predictions`).

Labels are read with :func:`ichd.data.labels.read_labels` (CT-ICH labels.csv, RSNA ``stage_2_train.csv``,
ichd labels CSV). A ``--scans`` map is a CSV with ``slice_id, scan_id`` and optionally ``patient_id``.

Every problem (unknown columns, missing classes, NaN, probabilities outside [0, 1], IDs that do not match)
raises :class:`ichd.errors.InputError` naming the file and the offending rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichd.constants import LABELS
from ichd.data.labels import rsna_long_to_wide
from ichd.errors import InputError
from ichd.utils.logging import get_logger

log = get_logger(__name__)

#: Identifier columns of the ichd predictions / labels CSV.
ID_COLUMNS: tuple[str, ...] = ("slice_id", "scan_id", "patient_id", "slice_index", "fold")

#: How many offending rows an error message lists.
MAX_LISTED = 8


def _listing(items: Sequence[Any], total: int | None = None) -> str:
    items = list(items)
    total = len(items) if total is None else total
    shown = ", ".join(str(x) for x in items[:MAX_LISTED])
    more = f" and {total - MAX_LISTED} more" if total > MAX_LISTED else ""
    return shown + more


@dataclass
class PredictionSet:
    """Predictions read from a file.

    Attributes:
        slices: one row per slice, index ``slice_id`` (str), float columns :data:`LABELS`, and object columns
            ``scan_id`` / ``patient_id`` (``None`` where the file does not say), ``fold`` (or ``None``).
        scans: the model's own scan-level output (index ``scan_id``, columns :data:`LABELS`) when the file
            carries one (predict JSON), else ``None``.
        source: the path read.
        fmt: ``"ichd-csv"``, ``"predict-json"`` or ``"rsna-csv"``.
        calibrated: how the probabilities were calibrated when the file says so (an ichd CSV's optional
            ``calibrated`` column, e.g. ``temperature``), else ``None``.
    """

    slices: pd.DataFrame
    scans: pd.DataFrame | None
    source: str
    fmt: str
    calibrated: str | None = None


def check_probabilities(df: pd.DataFrame, source: str, *, where: pd.Series | None = None) -> None:
    """Raise :class:`InputError` naming rows whose label columns are missing, non-numeric, NaN or outside [0, 1].

    ``where`` maps each row (same index as ``df``) to a human location such as ``"line 12"``; the index is used
    otherwise.
    """
    missing = [lab for lab in LABELS if lab not in df.columns]
    if missing:
        raise InputError(f"{source}: missing probability column(s) {', '.join(missing)}",
                         hint=f"a predictions file needs one column per label: {', '.join(LABELS)}")
    loc = where if where is not None else pd.Series([f"slice {i}" for i in df.index], index=df.index)
    for lab in LABELS:
        df[lab] = check_values(df[lab], source, loc, f"column {lab!r}")


def check_values(raw: pd.Series, source: str, loc: pd.Series, what: str) -> pd.Series:
    """Probabilities in ``raw`` as float64, or :class:`InputError` naming (via ``loc``) rows that are
    non-numeric, empty/NaN or outside [0, 1]."""
    values = pd.to_numeric(raw, errors="coerce")
    bad_text = values.isna() & raw.notna() & (raw.astype(str).str.strip().str.lower() != "nan")
    if bad_text.any():
        rows = [f"{loc[i]} ({raw[i]!r})" for i in raw.index[bad_text]]
        raise InputError(f"{source}: {what} is not a number in {int(bad_text.sum())} row(s): "
                         f"{_listing(rows, int(bad_text.sum()))}")
    nan = values.isna()
    if nan.any():
        raise InputError(f"{source}: {what} is empty or NaN in {int(nan.sum())} row(s): "
                         f"{_listing(loc[nan].tolist(), int(nan.sum()))}",
                         hint="every slice needs a probability for every label")
    out = (values < 0) | (values > 1)
    if out.any():
        rows = [f"{loc[i]} ({values[i]:g})" for i in values.index[out]]
        raise InputError(f"{source}: {what} has {int(out.sum())} value(s) outside [0, 1]: "
                         f"{_listing(rows, int(out.sum()))}",
                         hint="give probabilities, not logits (apply a sigmoid)")
    return values.astype(np.float64)


def _check_unique(ids: pd.Series, source: str, what: str, loc: pd.Series) -> None:
    dup = ids.duplicated(keep=False)
    if dup.any():
        rows = [f"{loc[i]} ({ids[i]})" for i in ids.index[dup]]
        raise InputError(f"{source}: {what} occurs more than once: {_listing(rows, int(dup.sum()))}")


def _optional_id(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series([None] * len(df), index=df.index, dtype=object)
    s = df[col].astype(object)
    return s.where(s.notna() & (s.astype(str).str.strip() != ""), None).map(
        lambda v: None if v is None else str(v))


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise InputError(f"cannot read CSV {path}: {e}") from e


def _read_ichd_csv(df: pd.DataFrame, source: str) -> PredictionSet:
    lines = pd.Series([f"line {i + 2}" for i in range(len(df))], index=df.index)
    if df["slice_id"].isna().any():
        raise InputError(f"{source}: empty slice_id in {_listing(lines[df['slice_id'].isna()].tolist())}")
    lines = lines + " [" + df["slice_id"].astype(str) + "]"
    check_probabilities(df, source, where=lines)
    _check_unique(df["slice_id"], source, "slice_id", lines)
    out = pd.DataFrame({lab: df[lab].to_numpy(np.float64) for lab in LABELS}, index=df["slice_id"].astype(str))
    out.index.name = "slice_id"
    for col in ("scan_id", "patient_id", "fold"):
        out[col] = _optional_id(df, col).to_numpy()
    if "slice_index" in df.columns:
        out["slice_index"] = pd.to_numeric(df["slice_index"], errors="coerce").to_numpy()
    if "source" in df.columns:
        out["source"] = _optional_id(df, "source").to_numpy()
    return PredictionSet(out, None, source, "ichd-csv", calibrated=_calibration_of(df, source))


#: Values of a ``calibrated`` column that mean "not calibrated".
_NOT_CALIBRATED = {"", "0", "false", "no", "none", "nan"}


def _calibration_of(df: pd.DataFrame, source: str) -> str | None:
    """What an ichd CSV's optional ``calibrated`` column says: ``None`` (absent / false everywhere), the method
    name (``true``/``1`` read as ``yes``); an error when rows disagree."""
    if "calibrated" not in df.columns:
        return None
    values = {str(v).strip().lower() for v in df["calibrated"].fillna("")}
    methods = values - _NOT_CALIBRATED
    if not methods:
        return None
    if len(methods) > 1 or values & _NOT_CALIBRATED:
        raise InputError(f"{source}: the 'calibrated' column differs between rows ({', '.join(sorted(values))})",
                         hint="calibrate every fold the same way, or leave the column out")
    method = methods.pop()
    return "yes" if method in ("1", "true", "yes") else method


def _read_rsna_csv(df: pd.DataFrame, source: str) -> PredictionSet:
    id_col = next(c for c in df.columns if c.lower() == "id")
    value_col = next(c for c in df.columns if c.lower() == "label")
    lines = pd.Series([f"line {i + 2}" for i in range(len(df))], index=df.index)
    values = check_values(df[value_col], source, lines, "Label")
    wide = rsna_long_to_wide(df[id_col], values, source)
    for col in ("scan_id", "patient_id", "fold"):
        wide[col] = None
    return PredictionSet(wide, None, source, "rsna-csv")


def _label_probs(obj: Any, source: str, where: str) -> dict[str, float]:
    if isinstance(obj, dict) and "probabilities" in obj and isinstance(obj["probabilities"], dict):
        obj = obj["probabilities"]
    if not isinstance(obj, dict):
        raise InputError(f"{source}: {where} has no probabilities object")
    missing = [lab for lab in LABELS if lab not in obj]
    if missing:
        raise InputError(f"{source}: {where} lacks probabilities for {', '.join(missing)}")
    return {lab: obj[lab] for lab in LABELS}


def _read_predict_json(paths: list[Path], source: str) -> PredictionSet:
    slice_rows: list[dict[str, Any]] = []
    scan_rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read predict JSON {path}: {e}") from e
        for k, pred in enumerate(doc if isinstance(doc, list) else [doc]):
            tag = f"{path.name}" + (f"[{k}]" if isinstance(doc, list) else "")
            if not isinstance(pred, dict) or "slices" not in pred or "series_instance_uid" not in pred:
                raise InputError(f"{path}: not an ichd predict JSON (needs 'series_instance_uid' and 'slices')",
                                 hint="give an ichd predictions CSV, predict JSON files or an RSNA submission")
            scan_id = str(pred["series_instance_uid"])
            for j, s in enumerate(pred["slices"]):
                where = f"{tag} slices[{j}]"
                if not isinstance(s, dict) or not s.get("sop_instance_uid"):
                    raise InputError(f"{path}: {where} has no sop_instance_uid")
                slice_rows.append({"slice_id": str(s["sop_instance_uid"]), "scan_id": scan_id,
                                   "slice_index": s.get("index", j), "where": where,
                                   **_label_probs(s, str(path), where)})
            if isinstance(pred.get("scan"), dict):
                scan_rows.append({"scan_id": scan_id, "where": f"{tag} scan",
                                  **_label_probs(pred["scan"], str(path), f"{tag} scan")})
    if not slice_rows:
        raise InputError(f"{source}: the predict JSON file(s) hold no slices")
    df = pd.DataFrame(slice_rows)
    where = df["where"]
    check_probabilities(df, source, where=where)
    _check_unique(df["slice_id"], source, "sop_instance_uid", where)
    out = df.set_index("slice_id")[list(LABELS) + ["scan_id", "slice_index"]].copy()
    out["patient_id"] = None
    out["fold"] = None
    scans = None
    if scan_rows:
        sdf = pd.DataFrame(scan_rows)
        check_probabilities(sdf, source, where=sdf["where"])
        _check_unique(sdf["scan_id"], source, "series_instance_uid", sdf["where"])
        scans = sdf.set_index("scan_id")[list(LABELS)].astype(np.float64)
    return PredictionSet(out, scans, source, "predict-json")


def read_predictions(path: str | Path) -> PredictionSet:
    """Read a predictions file or folder in any supported format (see the module docstring)."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise InputError(f"{path} is a folder without *.json predict files")
        return _read_predict_json(files, source)
    if not path.is_file():
        raise InputError(f"predictions file {path} does not exist")
    if path.suffix.lower() == ".json":
        return _read_predict_json([path], source)
    df = _read_csv(path)
    cols = [c.lower() for c in df.columns]
    if "slice_id" in df.columns:
        return _read_ichd_csv(df, source)
    if sorted(cols) == ["id", "label"]:
        return _read_rsna_csv(df, source)
    raise InputError(f"{path}: cannot tell the predictions format from the columns {list(df.columns)[:10]}",
                     hint="expected an ichd CSV (slice_id, ..., " + ", ".join(LABELS)
                     + "), an RSNA submission (ID,Label) or predict JSON")


def read_scan_map(path: str | Path) -> pd.DataFrame:
    """Read a ``--scans`` map: CSV ``slice_id, scan_id[, patient_id]`` -> DataFrame indexed by slice_id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"scan map {path} does not exist")
    df = _read_csv(path)
    for col in ("slice_id", "scan_id"):
        if col not in df.columns:
            raise InputError(f"{path}: scan map needs columns slice_id and scan_id (has {list(df.columns)})")
    lines = pd.Series([f"line {i + 2}" for i in range(len(df))], index=df.index)
    empty = df["slice_id"].isna() | df["scan_id"].isna()
    if empty.any():
        raise InputError(f"{path}: empty slice_id or scan_id in {_listing(lines[empty].tolist(), int(empty.sum()))}")
    _check_unique(df["slice_id"], str(path), "slice_id", lines)
    out = pd.DataFrame({"scan_id": df["scan_id"].astype(str).to_numpy(),
                        "patient_id": _optional_id(df, "patient_id").to_numpy()},
                       index=df["slice_id"].astype(str))
    out.index.name = "slice_id"
    return out


def read_scan_predictions(path: str | Path) -> pd.DataFrame:
    """Read the model's own scan-level output: CSV ``scan_id`` + one probability column per label (other columns,
    e.g. ``patient_id`` or ``y_<label>`` of ``ichd train seq``'s ``oof_scans.csv``, are ignored).

    Returns a DataFrame indexed by ``scan_id`` with float columns :data:`LABELS`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"scan predictions file {path} does not exist")
    df = _read_csv(path)
    if "scan_id" not in df.columns:
        raise InputError(f"{path}: scan predictions need a scan_id column and one column per label "
                         f"({', '.join(LABELS)}); has {list(df.columns)[:10]}")
    lines = pd.Series([f"line {i + 2}" for i in range(len(df))], index=df.index) + " [" + df["scan_id"].astype(
        str) + "]"
    check_probabilities(df, str(path), where=lines)
    _check_unique(df["scan_id"], str(path), "scan_id", lines)
    out = df.set_index(df["scan_id"].astype(str))[list(LABELS)].astype(np.float64)
    out.index.name = "scan_id"
    return out


def read_label_table(path: str | Path | Sequence[str | Path], *, source: str | None = None
                     ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Labels via :func:`ichd.data.labels.read_labels` (several files: one per data source, read with
    :func:`ichd.data.labels.read_label_sources`, which adds a ``source`` column), checked to be 0/1 in every
    label column; returns ``(table, notes, left_out_slice_ids)``.

    Slices with missing labels (empty cells, e.g. three rsna-series slices) cannot be scored: they are left out
    (with a note), and the caller leaves their predictions out too. ``source`` keeps one source's slices only.
    """
    from ichd.data.labels import read_label_sources, read_labels

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    df = read_labels(paths[0]) if len(paths) == 1 else read_label_sources(paths)
    notes: list[str] = []
    all_ids = df.index.astype(str)
    if source is not None:
        if "source" not in df.columns:
            raise InputError(f"--source {source!r} needs several label files (one per source)",
                             hint="pass one label file per data source")
        names = sorted(set(df["source"].astype(str)))
        if source not in names:
            from ichd.errors import did_you_mean

            raise InputError(f"no label file of source {source!r}; {did_you_mean(source, names)}")
        df = df[df["source"] == source]
        notes.append(f"Only the slices of source {source!r} are evaluated.")
    missing = df[list(LABELS)].isna().any(axis=1) if all(c in df.columns for c in LABELS) else None
    if missing is not None and missing.any():
        notes.append(f"{int(missing.sum())} slice(s) with missing labels are left out of every metric "
                     f"({_listing(df.index[missing].astype(str).tolist(), int(missing.sum()))}).")
        df = df[~missing].copy()
        for c in LABELS:
            df[c] = df[c].astype(np.int64)
    check_labels(df, ", ".join(str(p) for p in paths))
    return df, notes, sorted(set(all_ids) - set(df.index.astype(str)))


def check_labels(df: pd.DataFrame, source: str) -> None:
    """Raise :class:`InputError` naming rows whose labels are missing or not 0/1."""
    missing = [lab for lab in LABELS if lab not in df.columns]
    if missing:
        raise InputError(f"{source}: labels lack column(s) {', '.join(missing)}")
    for lab in LABELS:
        v = pd.to_numeric(df[lab], errors="coerce")
        bad = ~v.isin([0, 1])
        if bad.any():
            raise InputError(f"{source}: label {lab!r} is not 0/1 for slice(s) "
                             f"{_listing(df.index[bad].tolist(), int(bad.sum()))}")


# ------------------------------------------------------------------------------------------------------------
# lining predictions up with labels
# ------------------------------------------------------------------------------------------------------------


@dataclass
class EvalData:
    """Predictions and labels on the same slices, plus scan and patient membership.

    ``y``/``p`` are ``(n_slices, 6)``; ``scan_ids``/``patient_ids`` are per slice (``None`` when unknown).
    ``y_scan``/``p_scan`` are per scan in the order of ``scans`` (``None`` without scan ids);
    ``scan_patients`` gives each scan's patient. ``scan_score_source`` says where ``p_scan`` came from.
    ``group_kind`` is what the bootstrap resamples ("patient", "scan" or "slice"). ``folds``, ``slice_index`` and
    ``sources`` are per slice when the inputs say (else ``None``).
    """

    slice_ids: np.ndarray
    y: np.ndarray
    p: np.ndarray
    scan_ids: np.ndarray | None
    patient_ids: np.ndarray
    group_kind: str
    scans: np.ndarray | None = None
    y_scan: np.ndarray | None = None
    p_scan: np.ndarray | None = None
    scan_patients: np.ndarray | None = None
    scan_score_source: str | None = None
    folds: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    #: per slice: position in its scan (inferior -> superior) when known, for order-dependent scan rules
    slice_index: np.ndarray | None = None
    #: per slice: the data source (label file's folder, or the predictions' ``source`` column) when known
    sources: np.ndarray | None = None
    #: how the predictions were calibrated when their file says so (:attr:`PredictionSet.calibrated`)
    calibrated: str | None = None

    @property
    def has_scans(self) -> bool:
        return self.scans is not None


def _merge_ids(primary: pd.Series, secondary: pd.Series, what: str, src1: str, src2: str) -> pd.Series:
    both = primary.notna() & secondary.notna()
    clash = both & (primary.astype(str) != secondary.astype(str))
    if clash.any():
        rows = [f"{i} ({primary[i]} vs {secondary[i]})" for i in primary.index[clash]]
        raise InputError(f"{what} differs between {src1} and {src2} for slice(s) {_listing(rows, int(clash.sum()))}")
    return primary.where(primary.notna(), secondary)


def align(preds: PredictionSet, labels: pd.DataFrame, *, labels_source: str = "labels",
          scan_map: pd.DataFrame | None = None, scan_map_source: str = "scan map",
          partial_scans: bool = False) -> EvalData:
    """Match predictions to labels by slice id and work out scan and patient membership.

    Rules: every predicted slice must have a label (else an error naming the slices). Labelled scans without any
    predicted slice are ignored (a note says how many); a scan with only some slices predicted is an error
    (its scan label would be wrong) unless ``partial_scans`` (see :func:`_check_complete_scans`). Scan ids come from the ``--scans`` map, else the predictions, else the
    labels; they must agree where several say. Patient ids likewise; without any, scans stand in for patients.
    """
    notes: list[str] = []
    check_labels(labels, labels_source)
    lab_index = labels.index.astype(str)
    labels = labels.copy()
    labels.index = lab_index
    pred = preds.slices
    unknown = ~pred.index.isin(lab_index)
    if unknown.any():
        raise InputError(
            f"{int(unknown.sum())} of {len(pred)} predicted slice(s) in {preds.source} have no label in "
            f"{labels_source}: {_listing(pred.index[unknown].tolist(), int(unknown.sum()))}",
            hint="check that both files use the same slice ids (docs/architecture.md, 'Identifiers')")
    lab = labels.loc[pred.index]
    scan = _optional_id(pred, "scan_id")
    patient = _optional_id(pred, "patient_id")
    scan = _merge_ids(scan, _optional_id(lab, "scan_id"), "scan_id", preds.source, labels_source)
    patient = _merge_ids(patient, _optional_id(lab, "patient_id"), "patient_id", preds.source, labels_source)
    if scan_map is not None:
        not_mapped = ~pred.index.isin(scan_map.index)
        if not_mapped.any():
            raise InputError(f"{int(not_mapped.sum())} predicted slice(s) are not in {scan_map_source}: "
                             f"{_listing(pred.index[not_mapped].tolist(), int(not_mapped.sum()))}")
        m = scan_map.loc[pred.index]
        scan = _merge_ids(m["scan_id"].astype(object), scan, "scan_id", scan_map_source, "the other inputs")
        patient = _merge_ids(_optional_id(m, "patient_id"), patient, "patient_id", scan_map_source,
                             "the other inputs")
    has_scan = scan.notna()
    if has_scan.any() and not has_scan.all():
        raise InputError(f"scan membership is known for {int(has_scan.sum())} slices but not for "
                         f"{_listing(pred.index[~has_scan].tolist(), int((~has_scan).sum()))}",
                         hint="give a --scans map (slice_id,scan_id[,patient_id]) covering every slice")
    y = lab[list(LABELS)].to_numpy(np.float64)
    p = pred[list(LABELS)].to_numpy(np.float64)
    folds = pred["fold"].to_numpy(object) if "fold" in pred.columns and pred["fold"].notna().any() else None
    data_kwargs: dict[str, Any] = {"slice_ids": pred.index.to_numpy(object), "y": y, "p": p, "folds": folds,
                                   "slice_index": _slice_order(pred, lab), "calibrated": preds.calibrated,
                                   "sources": _slice_sources(pred, lab, preds.source, labels_source)}
    if not has_scan.any():
        notes.append("No scan membership in the inputs (give --scans slice_id,scan_id[,patient_id]): only "
                     "slice-level metrics are reported, and the bootstrap resamples slices, so its intervals "
                     "are too narrow when slices of one patient are correlated.")
        pids = np.asarray([str(i) for i in pred.index], dtype=object)
        return EvalData(scan_ids=None, patient_ids=pids, group_kind="slice", notes=notes, **data_kwargs)

    scan_arr = scan.astype(str).to_numpy(object)
    _check_complete_scans(scan_arr, labels, scan_map, notes, pred_ids=pred.index, partial_scans=partial_scans)
    pat_known = patient.notna()
    if pat_known.all():
        pat_arr = patient.astype(str).to_numpy(object)
        group_kind = "patient"
    elif not pat_known.any():
        pat_arr = scan_arr.copy()
        group_kind = "scan"
        notes.append("No patient ids in the inputs: the bootstrap resamples scans (each scan taken as its own "
                     "patient).")
    else:
        raise InputError(f"patient_id is known for {int(pat_known.sum())} slices but missing for "
                         f"{_listing(pred.index[~pat_known].tolist(), int((~pat_known).sum()))}")
    # one patient per scan
    pairs = pd.DataFrame({"scan": scan_arr, "patient": pat_arr}).drop_duplicates()
    multi = pairs["scan"].duplicated(keep=False)
    if multi.any():
        raise InputError(f"scan(s) belong to more than one patient: "
                         f"{_listing(sorted(set(pairs['scan'][multi])))}")
    scans, y_scan, p_max = _scan_rows(scan_arr, y, p)
    scan_pat = pairs.set_index("scan").loc[scans, "patient"].to_numpy(object)
    if preds.scans is not None:
        missing = [s for s in scans if s not in preds.scans.index]
        if missing:
            raise InputError(f"{preds.source}: no scan-level output for scan(s) {_listing(missing)}")
        p_scan = preds.scans.loc[list(scans), list(LABELS)].to_numpy(np.float64)
        source = "model scan output"
    else:
        p_scan = p_max
        source = "max over slice probabilities"
        notes.append("Scan score = maximum slice probability of the scan (the predictions carry no scan-level "
                     "output); scan label = 1 when any slice of the scan is positive.")
    return EvalData(scan_ids=scan_arr, patient_ids=pat_arr, group_kind=group_kind, scans=scans, y_scan=y_scan,
                    p_scan=p_scan, scan_patients=scan_pat, scan_score_source=source, notes=notes, **data_kwargs)


def _slice_order(pred: pd.DataFrame, lab: pd.DataFrame) -> np.ndarray | None:
    """Per-slice ``slice_index`` from the predictions, else the labels; ``None`` unless known for every slice."""
    for df in (pred, lab):
        if "slice_index" in df.columns:
            v = pd.to_numeric(df["slice_index"], errors="coerce")
            if v.notna().all():
                return v.to_numpy(np.float64)
    return None


def _slice_sources(pred: pd.DataFrame, lab: pd.DataFrame, pred_source: str, lab_source: str) -> np.ndarray | None:
    """Per-slice data source: the labels' ``source`` column (several label files), else the predictions'; they
    must agree where both say. ``None`` unless known for every slice."""
    merged = _merge_ids(_optional_id(lab, "source"), _optional_id(pred, "source"), "source", lab_source,
                        pred_source)
    return merged.astype(str).to_numpy(object) if merged.notna().all() else None


def _scan_rows(scan_arr: np.ndarray, y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from ichd.evaluation.metrics import scan_aggregate

    ids, ys, ps = scan_aggregate(y, p, scan_arr)
    return np.asarray(ids, dtype=object), ys, ps


def _check_complete_scans(scan_arr: np.ndarray, labels: pd.DataFrame, scan_map: pd.DataFrame | None,
                          notes: list[str], *, pred_ids: pd.Index | None = None,
                          partial_scans: bool = False) -> None:
    """Error when a predicted scan has labelled slices without predictions (unless ``partial_scans``: then a note,
    and still an error if an unpredicted slice carries a positive label that the scan's predicted slices do not,
    since the scan label would change); note scans left out entirely."""
    lab_scan = _optional_id(labels, "scan_id")
    if scan_map is not None:
        mapped = scan_map["scan_id"].reindex(labels.index)
        lab_scan = mapped.where(mapped.notna(), lab_scan)
    if lab_scan.isna().all():
        return
    counts_lab = lab_scan.dropna().value_counts()
    counts_pred = pd.Series(scan_arr).value_counts()
    predicted = set(counts_pred.index)
    partial = [s for s in predicted if s in counts_lab.index and counts_lab[s] > counts_pred[s]]
    if partial and not partial_scans:
        raise InputError(f"{len(partial)} scan(s) have labelled slices without a prediction: "
                         f"{_listing(sorted(partial))}",
                         hint="predict every slice of a scan, leave the scan out of the labels, or pass "
                              "--partial-scans (e.g. slices that ingest dropped as duplicate positions)")
    if partial:
        missing_total = 0
        for scan in sorted(partial):
            rows = labels[lab_scan == scan]
            done = rows.index.isin(pred_ids) if pred_ids is not None else np.zeros(len(rows), bool)
            missing_total += int((~done).sum())
            lost = rows.loc[~done, list(LABELS)].max() > rows.loc[done, list(LABELS)].max()
            if bool(lost.any()):
                raise InputError(f"scan {scan}: unpredicted slice(s) carry the only positive {', '.join(lost.index[lost])} "
                                 "label(s) of the scan, so its scan label would be wrong",
                                 hint="predict those slices")
        notes.append(f"{len(partial)} scan(s) are evaluated on their predicted slices only ({missing_total} labelled "
                     f"slice(s) without a prediction, none carrying a scan's only positive label): "
                     f"{_listing(sorted(partial))}.")
    left_out = [s for s in counts_lab.index if s not in predicted]
    if left_out:
        n_sl = int(counts_lab[left_out].sum())
        notes.append(f"The labels hold {len(left_out)} more scan(s) ({n_sl} slices) without predictions; "
                     "they are not evaluated.")
