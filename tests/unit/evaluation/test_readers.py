"""Reader studies: parsing both layouts, majority votes, Cohen's and Fleiss' kappa, reader operating points."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from ichd.errors import InputError
from ichd.evaluation.readers import (
    cohen_kappa,
    fleiss_kappa,
    fleiss_kappa_binary,
    majority_vote,
    operating_point,
    read_reader_study,
    reader_agreement,
)


def test_cohen_kappa_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(60) < 0.4).astype(float)
    b = np.where(rng.random(60) < 0.8, a, 1 - a)
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    b_missing = b.copy()
    b_missing[:5] = np.nan
    assert cohen_kappa(a, b_missing) == pytest.approx(cohen_kappa_score(a[5:], b[5:]))
    assert math.isnan(cohen_kappa([1, 1], [1, 1]))


def test_fleiss_kappa_textbook_example() -> None:
    # Fleiss (1971) style example as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories, kappa 0.210
    counts = np.array([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ])
    assert counts.sum(axis=0).tolist() == [20, 28, 39, 21, 32]  # p_j = 0.143, 0.200, 0.279, 0.150, 0.229
    assert fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)
    with pytest.raises(ValueError):
        fleiss_kappa(np.array([[1, 1], [2, 1]]))


def test_fleiss_binary_hand_example() -> None:
    calls = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]])
    # P_i = 1, 1, 1/3, 1/3 -> P_bar = 2/3; p1 = 6/12 -> P_e = 0.5; kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert fleiss_kappa_binary(calls) == pytest.approx(1 / 3)


def test_majority_vote_and_operating_point() -> None:
    calls = np.array([[1, 1, 0], [0, 0, 1], [1, np.nan, 0], [np.nan, 1, 1]])
    np.testing.assert_array_equal(majority_vote(calls), [1, 0, np.nan, 1])
    op = operating_point([1, 0, 1, 1, np.nan], [1, 1, 0, 1, 0])
    assert (op["tp"], op["fn"], op["fp"], op["tn"], op["n"]) == (2, 1, 1, 0, 4)
    assert op["sensitivity"] == pytest.approx(2 / 3) and op["specificity"] == 0.0


def test_read_cq500_layout(tmp_path: Path) -> None:
    cols = ["name", "Category"] + [f"R{r}:{f}" for r in (1, 2, 3) for f in ("ICH", "IPH", "SDH", "Fracture")]
    # scan 1: all three readers call ICH + IPH; scan 2: R1 fracture only, R2 ICH + SDH, R3 nothing
    rows = ["CQ500-CT-1,B1," + ",".join(["1,1,0,0"] * 3), "CQ500-CT-2,B1,0,0,0,1,1,0,1,0,0,0,0,0"]
    path = tmp_path / "reads.csv"
    path.write_text(",".join(cols) + "\n" + "\n".join(rows) + "\n")
    study = read_reader_study(path)
    assert study.readers == ["R1", "R2", "R3"]
    assert study.labels == ["any", "intraparenchymal", "subdural"]
    np.testing.assert_array_equal(study.label_calls("any"), [[1, 1, 1], [0, 1, 0]])
    agree = reader_agreement(study)
    # R2 against the majority of R1 and R3 (both say 1 for scan 1, both 0 for scan 2)
    assert agree["any"]["readers"]["R2"]["fp"] == 1 and agree["any"]["readers"]["R2"]["tp"] == 1


def test_read_generic_layout_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "study.csv"
    path.write_text("scan_id,reader,any,subdural\nA,doc1,1,1\nA,doc2,1,0\nB,doc1,0,0\nB,doc2,,0\n")
    study = read_reader_study(path)
    assert study.cases == ["A", "B"] and study.readers == ["doc1", "doc2"]
    assert math.isnan(study.label_calls("any")[1, 1])
    path.write_text("scan_id,reader,any\nA,doc1,2\n")
    with pytest.raises(InputError, match="0 or 1.*line 2"):
        read_reader_study(path)
    path.write_text("scan_id,reader,any\nA,doc1,1\nA,doc1,0\n")
    with pytest.raises(InputError, match="occur twice"):
        read_reader_study(path)
    path.write_text("foo,bar\n1,2\n")
    with pytest.raises(InputError, match="not a reader-study file"):
        read_reader_study(path)
