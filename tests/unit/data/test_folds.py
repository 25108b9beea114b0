"""Patient-level folds: no leakage, positives everywhere, determinism, balance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichd.constants import LABELS
from ichd.data.folds import add_fold_column, iterative_stratification, patient_folds, split_fold
from ichd.errors import InputError


def _table(n_patients: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        n = int(rng.integers(5, 12))
        pos = rng.random() < 0.4
        sub = int(rng.integers(1, 6))
        for s in range(n):
            y = [0] * 6
            if pos and s in (2, 3):
                y[0] = 1
                y[sub] = 1
            rows.append({"slice_id": f"p{p}-{s}", "scan_id": f"p{p}", "patient_id": f"p{p}", "slice_index": s,
                         **dict(zip(LABELS, y))})
    return pd.DataFrame(rows).set_index("slice_id")


def test_no_patient_in_two_folds_and_every_fold_has_positives() -> None:
    df = _table()
    folds = patient_folds(df, k=5, seed=0)
    assert folds.index.is_unique and set(folds) == set(range(5))
    with_fold = add_fold_column(df, folds)
    assert (with_fold.groupby("patient_id")["fold"].nunique() == 1).all()
    assert (with_fold.groupby("fold")["any"].sum() > 0).all()
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 1


def test_deterministic_and_seed_dependent() -> None:
    df = _table()
    a = patient_folds(df, 5, seed=3)
    pd.testing.assert_series_equal(a, patient_folds(df, 5, seed=3))
    assert not a.equals(patient_folds(df, 5, seed=4))


def test_rare_label_spread() -> None:
    y = np.zeros((20, 2), dtype=int)
    y[:4, 1] = 1  # 4 patients with a rare label, 4 folds -> one each
    folds = iterative_stratification(y, 4, seed=0)
    assert sorted(folds[:4].tolist()) == [0, 1, 2, 3]


def test_split_fold() -> None:
    df = _table()
    folds = patient_folds(df, 4)
    train, val = split_fold(df, folds, 2)
    assert len(train) + len(val) == len(df)
    assert not set(train["patient_id"]) & set(val["patient_id"])
    with pytest.raises(InputError):
        split_fold(df, folds, 9)


def test_errors() -> None:
    df = _table(3)
    with pytest.raises(InputError, match="cannot make"):
        patient_folds(df, k=5)
    with pytest.raises(InputError, match="at least 2"):
        patient_folds(df, k=1)
    with pytest.raises(InputError, match="patient_id"):
        patient_folds(df.drop(columns="patient_id"))
    bad = df.copy()
    bad.loc[bad.index[0], "patient_id"] = None
    with pytest.raises(InputError, match="no patient_id"):
        patient_folds(bad, k=2)


def _two_source_table() -> pd.DataFrame:
    """82 'ctich' patients and 20 'rsna' patients (6 positive), like CT-ICH + rsna-series."""
    a = _table(82, seed=3)
    a["source"] = "ctich"
    rows = []
    for p in range(20):
        for s in range(6):
            y = [0] * 6
            if p < 6 and s in (2, 3):
                y[0] = 1
                y[2] = 1
            rows.append({"slice_id": f"r{p}-{s}", "scan_id": f"r{p}", "patient_id": f"r{p}", "slice_index": s,
                         **dict(zip(LABELS, y)), "source": "rsna"})
    b = pd.DataFrame(rows).set_index("slice_id")
    b.loc["r7-1", list(LABELS)] = np.nan  # a missing label
    return pd.concat([a, b])


def test_folds_stratified_by_source_and_any() -> None:
    df = _two_source_table()
    folds = patient_folds(df, 5, seed=42)
    rsna = folds[folds.index.str.startswith("r")]
    assert sorted(rsna.value_counts().tolist()) == [4, 4, 4, 4, 4]  # 20 rsna patients: 4 per fold
    pos = folds[[f"r{p}" for p in range(6)]]
    assert pos.value_counts().max() <= 2 and pos.nunique() >= 4  # 6 positive rsna patients spread out
    assert set(folds.value_counts().tolist()) <= {20, 21, 22}
    out = add_fold_column(df, folds)
    assert (out.groupby("patient_id")["fold"].nunique() == 1).all()  # no patient in two folds


def test_single_source_folds_unchanged_by_source_column() -> None:
    df = _table(40, seed=1)
    with_source = df.assign(source="only")
    assert patient_folds(df, 5, seed=7).equals(patient_folds(with_source, 5, seed=7))


def test_patient_with_two_sources_is_an_error() -> None:
    df = _two_source_table()
    df.loc["r0-0", "source"] = "ctich"
    with pytest.raises(InputError, match="several sources"):
        patient_folds(df, 5)
