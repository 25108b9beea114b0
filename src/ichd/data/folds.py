"""Patient-level cross-validation folds (a patient's slices never appear in two folds).

Splitting is by **patient**, never by slice: neighbouring slices of one scan are nearly identical, so a slice-level
split leaks. Folds are balanced with iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML-PKDD 2011) on
each patient's subtype profile: a patient counts as positive for a label when any of its slices is. Rare labels
are placed first, each patient going to the fold that still needs that label most, so every fold gets positives
of every label that has at least ``k`` positive patients, and fold sizes stay within about one patient. A table
with several data sources (a ``source`` column, :func:`ichd.data.labels.read_label_sources`) is also stratified
by source and by source x "any" (:func:`source_strata`).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ichd.constants import LABELS
from ichd.errors import InputError


def patient_profiles(df: pd.DataFrame, labels: tuple[str, ...] = LABELS) -> pd.DataFrame:
    """One row per ``patient_id``: 1 where any of the patient's slices is positive for the label."""
    if "patient_id" not in df.columns:
        raise InputError("the label table has no patient_id column",
                         hint="attach scan/patient ids first (ichd.data.labels.attach_scans)")
    missing = [c for c in labels if c not in df.columns]
    if missing:
        raise InputError(f"the label table lacks label column(s) {missing}")
    if df["patient_id"].isna().any():
        n = int(df["patient_id"].isna().sum())
        raise InputError(f"{n} slice(s) have no patient_id; folds must split by patient",
                         hint="attach ids from the cache with ichd.data.labels.attach_scans")
    # max skips missing (NaN) labels; a label missing on every slice of a patient counts as negative
    return df.groupby("patient_id", sort=True)[list(labels)].max().fillna(0).astype(np.int64)


def iterative_stratification(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Assign the rows of binary matrix ``y`` (n, L) to ``k`` folds; returns fold numbers (n,) in 0..k-1.

    Rows with no positive label are spread over the folds by remaining capacity. Deterministic for a ``seed``.
    """
    y = np.asarray(y, dtype=np.int64)
    n, n_labels = y.shape
    if k < 2:
        raise InputError(f"need at least 2 folds, got k={k}")
    if n < k:
        raise InputError(f"cannot make {k} folds from {n} patient(s)", hint="use fewer folds or more patients")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)  # random tie-breaking among equal patients, fixed by the seed
    capacity = np.full(k, n / k)
    need = np.tile(y.sum(axis=0) / k, (k, 1)).astype(np.float64)  # (k, L) positives each fold still wants
    folds = np.full(n, -1, dtype=np.int64)
    remaining = y.copy()

    def pick(candidates: np.ndarray) -> int:
        best = candidates[capacity[candidates] == capacity[candidates].max()]
        return int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])

    while True:
        counts = remaining[folds == -1].sum(axis=0) if (folds == -1).any() else np.zeros(n_labels)
        active = np.flatnonzero(counts > 0)
        if not len(active):
            break
        label = int(active[np.argmin(counts[active])])  # the rarest label still to place
        rows = [i for i in order if folds[i] == -1 and y[i, label]]
        for i in rows:
            col = need[:, label]
            f = pick(np.flatnonzero(col == col.max()))
            folds[i] = f
            need[f] -= y[i]
            capacity[f] -= 1
    for i in order:
        if folds[i] == -1:
            f = pick(np.arange(k))
            folds[i] = f
            capacity[f] -= 1
    return folds


def patient_folds(df: pd.DataFrame, k: int = 5, seed: int = 0,
                  labels: tuple[str, ...] = LABELS) -> pd.Series:
    """Fold number (0..k-1) per patient: a :class:`pandas.Series` named ``fold`` indexed by ``patient_id``.

    ``df`` is a slice-level label table (:func:`ichd.data.labels.read_labels`) with ``patient_id`` and the label
    columns. The same table, ``k`` and ``seed`` always give the same folds.
    """
    profiles = patient_profiles(df, labels)
    matrix = profiles.to_numpy()
    strata = source_strata(df, profiles.index)
    if strata is not None:
        matrix = np.concatenate([matrix, strata.to_numpy()], axis=1)
    folds = iterative_stratification(matrix, k, seed)
    return pd.Series(folds, index=profiles.index, name="fold")


def source_strata(df: pd.DataFrame, patients: pd.Index, label: str = "any") -> pd.DataFrame | None:
    """Extra stratification columns for a table with several data sources (a ``source`` column with more than
    one value): per patient, one 0/1 column per source and one per (source, ``label``-positive) pair, so each
    source and each source's positive patients are spread evenly over the folds (e.g. the 20 rsna-series
    patients, 6 of them with hemorrhage, among 82 CT-ICH patients). ``None`` for a single source, which keeps
    single-source folds exactly as before."""
    if "source" not in df.columns or df["source"].nunique() < 2:
        return None
    per_patient = df.groupby("patient_id", sort=True)["source"].agg(lambda s: sorted(set(s)))
    mixed = per_patient[per_patient.map(len) > 1]
    if len(mixed):
        raise InputError(f"patient {mixed.index[0]!r} has slices from several sources {mixed.iloc[0]}",
                         hint="give each source its own patient ids")
    source = per_patient.map(lambda s: s[0]).reindex(patients)
    positive = df.groupby("patient_id", sort=True)[label].max().reindex(patients).fillna(0) > 0.5
    cols = {}
    for name in sorted(source.unique()):
        cols[f"source={name}"] = (source == name).astype(np.int64)
        cols[f"source={name}&{label}"] = ((source == name) & positive).astype(np.int64)
    return pd.DataFrame(cols, index=patients)


def add_fold_column(df: pd.DataFrame, folds: pd.Series) -> pd.DataFrame:
    """A copy of the slice table ``df`` with a ``fold`` column taken from its patient's fold."""
    out = df.copy()
    out["fold"] = out["patient_id"].map(folds)
    if out["fold"].isna().any():
        raise InputError(f"{int(out['fold'].isna().sum())} slice(s) belong to patients without a fold",
                         hint="compute folds on the same table")
    out["fold"] = out["fold"].astype(np.int64)
    return out


def split_fold(df: pd.DataFrame, folds: pd.Series, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, validation)`` slice tables for ``fold``: validation = the slices of that fold's patients."""
    if fold not in set(folds.tolist()):
        raise InputError(f"fold {fold} does not exist; folds are {sorted(set(folds.tolist()))}")
    val_patients = set(folds.index[folds == fold])
    is_val = df["patient_id"].isin(val_patients).to_numpy()
    return df[~is_val], df[is_val]


def read_patient_folds(path: str | os.PathLike[str]) -> pd.Series:
    """A ``patient_id,fold`` CSV (e.g. a training run's ``folds.csv``) as the Series :func:`patient_folds` returns.
    A patient listed in two folds, or a fold that is not an integer, is an :class:`InputError`."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise InputError(f"folds file {str(path)!r} not found", hint="give a patient_id,fold CSV (a run's folds.csv)")
    try:
        df = pd.read_csv(path, dtype={"patient_id": str})
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read folds file {str(path)!r}: {e}") from e
    if not {"patient_id", "fold"} <= set(df.columns):
        raise InputError(f"folds file {str(path)!r} needs columns patient_id and fold, has {list(df.columns)}")
    pairs = df[["patient_id", "fold"]].drop_duplicates()
    if pairs["patient_id"].duplicated().any():
        bad = pairs.loc[pairs["patient_id"].duplicated(), "patient_id"].iloc[0]
        raise InputError(f"folds file {str(path)!r}: patient {bad!r} is in more than one fold")
    try:
        folds = pairs["fold"].astype(np.int64)
    except (TypeError, ValueError) as e:
        raise InputError(f"folds file {str(path)!r}: fold values must be integers ({e})") from e
    return pd.Series(folds.to_numpy(), index=pd.Index(pairs["patient_id"].astype(str), name="patient_id"),
                     name="fold").sort_index()


def folds_for_table(df: pd.DataFrame, folds: pd.Series, k: int, source: str = "folds file") -> pd.Series:
    """The folds of the patients in slice table ``df`` taken from a given assignment ``folds`` (patients the table
    lacks are dropped). Every patient of the table needs a fold in 0..k-1 (:class:`InputError` otherwise)."""
    patients = pd.Index(sorted(df["patient_id"].astype(str).unique()), name="patient_id")
    missing = patients.difference(folds.index)
    if len(missing):
        raise InputError(f"{len(missing)} patient(s) of the training table have no fold in the {source}, e.g. "
                         f"{missing[0]!r}", hint="use the folds file of a run on the same data, or compute folds")
    out = folds.reindex(patients).astype(np.int64).rename("fold")
    bad = sorted(set(out.tolist()) - set(range(k)))
    if bad:
        raise InputError(f"the {source} has fold(s) {bad}, expected 0..{k - 1}", hint="set data.folds to match")
    return out
