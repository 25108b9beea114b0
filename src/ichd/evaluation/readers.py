"""Human readers: reading reader-study files, majority votes, agreement (kappa) and reader operating points.

Two layouts are read (:func:`read_reader_study` tells them apart by the header):

* **CQ500 ``reads.csv``** (Chilamkurthy et al., Lancet 2018): one row per scan, ``name`` plus ``R<k>:<finding>``
  0/1 columns for three readers. Findings map to ichd labels: ICH -> any, EDH -> epidural, IPH ->
  intraparenchymal, IVH -> intraventricular, SAH -> subarachnoid, SDH -> subdural (other findings such as
  fractures or midline shift are ignored).
* **ichd reader-study CSV** (the seed's reader-study layout, Burduja et al. 2020 Table 5): one row per scan and
  reader, columns ``scan_id, reader`` and 0/1 columns for any subset of :data:`ichd.constants.LABELS`::

      scan_id,reader,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural
      1.2.840.113619.2.55.3.1,doctor1,1,0,1,0,0,0

A missing call is an empty cell (``nan``); it is left out of every statistic that needs it.

Agreement: Cohen's kappa for every pair of raters (readers and, in ``ichd evaluate``, the model's calls at an
operating point) and Fleiss' kappa over all readers, per label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ichd.constants import LABELS
from ichd.errors import InputError

#: CQ500 finding -> ichd label.
CQ500_FINDINGS: dict[str, str] = {
    "ICH": "any",
    "EDH": "epidural",
    "IPH": "intraparenchymal",
    "IVH": "intraventricular",
    "SAH": "subarachnoid",
    "SDH": "subdural",
}


@dataclass
class ReaderStudy:
    """Scan-level calls of several readers.

    ``calls`` has shape ``(n_cases, n_readers, n_labels)`` with values 0, 1 or ``nan`` (not read);
    ``cases`` are the scan (or patient) names as written in the file, ``labels`` a subset of :data:`LABELS` in
    :data:`LABELS` order.
    """

    cases: list[str]
    readers: list[str]
    labels: list[str]
    calls: np.ndarray
    source: str = ""

    def label_calls(self, label: str) -> np.ndarray:
        """``(n_cases, n_readers)`` calls for one label."""
        return self.calls[:, :, self.labels.index(label)]

    def subset(self, cases: Sequence[str]) -> ReaderStudy:
        """The study restricted to ``cases`` (in that order)."""
        pos = {c: i for i, c in enumerate(self.cases)}
        idx = [pos[c] for c in cases]
        return ReaderStudy(list(cases), self.readers, self.labels, self.calls[idx], self.source)


def _binary(values: pd.Series, where: str) -> np.ndarray:
    v = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & ~v.isin([0, 1])
    if bad.any():
        rows = ", ".join(f"line {i + 2}" for i in values.index[bad][:8])
        raise InputError(f"{where}: calls must be 0 or 1 (or empty): {rows}")
    return v.to_numpy(np.float64)


def read_cq500_reads(path: str | Path) -> ReaderStudy:
    """Read CQ500's ``reads.csv`` (readers R1..Rk, findings mapped by :data:`CQ500_FINDINGS`)."""
    path = Path(path)
    df = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
    if "name" not in df.columns:
        raise InputError(f"{path}: CQ500 reads need a 'name' column")
    readers = sorted({c.split(":", 1)[0] for c in df.columns if ":" in c}, key=lambda r: (len(r), r))
    labels = [lab for lab in LABELS if any(f"{r}:{f}" in df.columns for r in readers
                                           for f, lab2 in CQ500_FINDINGS.items() if lab2 == lab)]
    if not readers or not labels:
        raise InputError(f"{path}: no 'R<k>:<finding>' columns for the findings {', '.join(CQ500_FINDINGS)}")
    finding_of = {lab: f for f, lab in CQ500_FINDINGS.items()}
    calls = np.full((len(df), len(readers), len(labels)), np.nan)
    for j, r in enumerate(readers):
        for k, lab in enumerate(labels):
            col = f"{r}:{finding_of[lab]}"
            if col in df.columns:
                calls[:, j, k] = _binary(df[col], f"{path} column {col}")
    names = df["name"].astype(str).str.strip()
    if names.duplicated().any():
        raise InputError(f"{path}: scan name(s) repeated: {', '.join(names[names.duplicated()].unique()[:8])}")
    return ReaderStudy(names.tolist(), readers, labels, calls, str(path))


def read_reader_csv(path: str | Path) -> ReaderStudy:
    """Read the ichd reader-study CSV (``scan_id, reader`` + label columns; see the module docstring)."""
    path = Path(path)
    df = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
    for col in ("scan_id", "reader"):
        if col not in df.columns:
            raise InputError(f"{path}: reader-study CSV needs columns scan_id, reader and label columns "
                             f"({', '.join(LABELS)}); has {list(df.columns)}")
    labels = [lab for lab in LABELS if lab in df.columns]
    if not labels:
        raise InputError(f"{path}: no label columns ({', '.join(LABELS)})")
    dup = df.duplicated(["scan_id", "reader"], keep=False)
    if dup.any():
        rows = ", ".join(f"line {i + 2}" for i in df.index[dup][:8])
        raise InputError(f"{path}: the same scan_id and reader occur twice: {rows}")
    cases = list(dict.fromkeys(df["scan_id"].astype(str)))
    readers = list(dict.fromkeys(df["reader"].astype(str)))
    calls = np.full((len(cases), len(readers), len(labels)), np.nan)
    ci = {c: i for i, c in enumerate(cases)}
    ri = {r: i for i, r in enumerate(readers)}
    vals = np.stack([_binary(df[lab], f"{path} column {lab}") for lab in labels], axis=1)
    for row, (c, r) in enumerate(zip(df["scan_id"].astype(str), df["reader"].astype(str))):
        calls[ci[c], ri[r]] = vals[row]
    return ReaderStudy(cases, readers, labels, calls, str(path))


def read_reader_study(path: str | Path) -> ReaderStudy:
    """Read either layout (CQ500 ``reads.csv`` or the ichd reader-study CSV), chosen by the header."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"reader file {path} does not exist")
    try:
        header = pd.read_csv(path, nrows=0, encoding="utf-8-sig").columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read reader file {path}: {e}") from e
    if "name" in header and any(":" in c for c in header):
        return read_cq500_reads(path)
    if "scan_id" in header and "reader" in header:
        return read_reader_csv(path)
    raise InputError(f"{path}: not a reader-study file", hint="expected CQ500 reads.csv (name, R1:ICH, ...) or "
                     "a CSV with scan_id, reader and label columns")


# ------------------------------------------------------------------------------------------------------------
# agreement and votes
# ------------------------------------------------------------------------------------------------------------


def majority_vote(calls: np.ndarray) -> np.ndarray:
    """Per case: 1 when more than half of the available calls are 1, 0 when more than half are 0, else ``nan``.

    ``calls`` is ``(n_cases, n_raters)`` with ``nan`` for missing calls. With three readers this is the "2 of 3"
    majority used as the CQ500 reference standard.
    """
    c = np.asarray(calls, dtype=np.float64)
    ones = np.nansum(c == 1, axis=1)
    zeros = np.nansum(c == 0, axis=1)
    out = np.full(c.shape[0], np.nan)
    out[ones > zeros] = 1.0
    out[zeros > ones] = 0.0
    return out


def cohen_kappa(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's kappa of two raters' binary calls over the cases both rated (``nan`` calls are dropped).

    ``kappa = (p_o - p_e) / (1 - p_e)``; ``nan`` when undefined (no cases, or ``p_e == 1``).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.size
    if n == 0:
        return math.nan
    po = float(np.mean(x == y))
    pe = float(np.mean(x == 1) * np.mean(y == 1) + np.mean(x == 0) * np.mean(y == 0))
    if pe >= 1.0:
        return math.nan
    return (po - pe) / (1.0 - pe)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from an ``(n_cases, n_categories)`` table of how many raters chose each category.

    Every case must have the same number of raters ``m >= 2``. ``P_i = (sum_j n_ij^2 - m) / (m (m - 1))``,
    ``P_bar = mean_i P_i``, ``p_j = sum_i n_ij / (N m)``, ``P_e = sum_j p_j^2``,
    ``kappa = (P_bar - P_e) / (1 - P_e)``; ``nan`` when ``P_e == 1``.
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 2 or n.shape[0] == 0:
        return math.nan
    m = n.sum(axis=1)
    if not np.allclose(m, m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa needs the same number (>= 2) of raters for every case")
    m0 = m[0]
    p_i = (np.sum(n * n, axis=1) - m0) / (m0 * (m0 - 1))
    p_bar = float(p_i.mean())
    p_j = n.sum(axis=0) / (n.shape[0] * m0)
    p_e = float(np.sum(p_j * p_j))
    if p_e >= 1.0:
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)


def fleiss_kappa_binary(calls: np.ndarray) -> float:
    """Fleiss' kappa of ``(n_cases, n_raters)`` binary calls, over the cases every rater called."""
    c = np.asarray(calls, dtype=np.float64)
    c = c[np.all(np.isfinite(c), axis=1)]
    if c.shape[0] == 0:
        return math.nan
    ones = c.sum(axis=1)
    return fleiss_kappa(np.stack([c.shape[1] - ones, ones], axis=1))


def pairwise_kappa(calls: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Cohen's kappa for every pair of raters: ``{"A vs B": kappa}``; ``calls`` is ``(n_cases, n_raters)``."""
    out = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            out[f"{names[i]} vs {names[j]}"] = cohen_kappa(calls[:, i], calls[:, j])
    return out


def operating_point(calls: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Sensitivity, specificity and counts of binary ``calls`` against a 0/1 ``reference`` (``nan`` rows dropped)."""
    from ichd.evaluation.metrics import metrics_from_counts

    c = np.asarray(calls, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    keep = np.isfinite(c) & np.isfinite(r)
    c, r = c[keep] == 1, r[keep] == 1
    tp, fp = int(np.sum(c & r)), int(np.sum(c & ~r))
    tn, fn = int(np.sum(~c & ~r)), int(np.sum(~c & r))
    return {**metrics_from_counts(tp, fp, tn, fn), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": int(keep.sum())}


def reader_agreement(study: ReaderStudy, reference: np.ndarray | None = None) -> dict[str, dict]:
    """Per label: each reader's operating point, pairwise Cohen's kappa and Fleiss' kappa over the readers.

    ``reference`` is ``(n_cases, n_labels)`` (e.g. ground truth). Without it each reader is scored against the
    majority of the **other** readers (cases where the others tie are left out and counted in ``n``).
    """
    out: dict[str, dict] = {}
    for k, lab in enumerate(study.labels):
        c = study.label_calls(lab)
        readers = {}
        for j, name in enumerate(study.readers):
            if reference is not None:
                ref = reference[:, k]
            else:
                others = np.delete(c, j, axis=1)
                ref = majority_vote(others)
            readers[name] = operating_point(c[:, j], ref)
        out[lab] = {
            "reference": "given" if reference is not None else "majority of the other readers",
            "readers": readers,
            "cohen_kappa": pairwise_kappa(c, study.readers),
            "fleiss_kappa": fleiss_kappa_binary(c),
            "n_cases": int(c.shape[0]),
            "majority_positive": int(np.nansum(majority_vote(c) == 1)),
        }
    return out
