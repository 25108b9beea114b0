"""build_bundle: from checkpoints + an `ichd evaluate` folder to a loadable bundle with thresholds and a card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichd.cli.main import run
from ichd.constants import LABELS
from ichd.errors import InputError
from ichd.inference.bundle_build import (
    CvEvaluation,
    build_bundle,
    code_licence,
    render_model_card,
    resolve_training_sources,
)
from ichd.inference.predictor import Predictor

REPO = Path(__file__).resolve().parents[3]
SOURCES = ("ct-ich", "rsna-series")


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic OOF predictions of 12 scans (6 positive for any and subdural), their labels in one file and split
    into one label file per source (even scans ct-ich, odd scans rsna-series)."""
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for s in range(12):
        for i in range(4):
            y = np.zeros(6, int)
            if s < 6 and i == 2:
                y[[0, 5]] = 1
                if s < 3:
                    y[1] = 1
            p = np.clip(0.6 * y + rng.uniform(0, 0.4, 6), 0, 1)
            ids = {"slice_id": f"s{s}-{i}", "scan_id": f"s{s}", "patient_id": f"p{s}", "slice_index": i}
            rows.append({**ids, "fold": s % 3, **dict(zip(LABELS, p))})
            labels.append({**ids, **dict(zip(LABELS, y))})
    root = tmp_path_factory.mktemp("eval")
    pd.DataFrame(rows).to_csv(root / "oof.csv", index=False)
    pd.DataFrame(labels).to_csv(root / "labels.csv", index=False)
    for k, name in enumerate(SOURCES):
        (root / name).mkdir()
        pd.DataFrame([r for r in labels if int(r["scan_id"][1:]) % 2 == k]).to_csv(root / name / "labels.csv",
                                                                                   index=False)
    return root


@pytest.fixture(scope="module")
def evaluation_dir(eval_root: Path) -> Path:
    """`ichd evaluate` of the pooled OOF predictions."""
    out = eval_root / "evaluation"
    assert run(["-q", "evaluate", str(eval_root / "oof.csv"), str(eval_root / "labels.csv"), "--out", str(out),
                "--bootstrap", "20", "--no-plots"]) == 0
    return out


@pytest.fixture(scope="module")
def source_evaluations(eval_root: Path, evaluation_dir: Path) -> dict[str, Path]:
    """`ichd evaluate ... --source NAME --thresholds-from POOLED/thresholds.json` per source."""
    out = {}
    for name in SOURCES:
        out[name] = eval_root / f"evaluation-{name}"
        assert run(["-q", "evaluate", str(eval_root / "oof.csv"), *(str(eval_root / n / "labels.csv") for n in SOURCES),
                    "--source", name, "--thresholds-from", str(evaluation_dir / "thresholds.json"),
                    "--out", str(out[name]), "--bootstrap", "20", "--no-plots"]) == 0
    return out


def test_build_bundle_with_sequence(tmp_path: Path, cnn_checkpoint: Path, seq_checkpoint: Path,
                                    evaluation_dir: Path, make_series):
    b = build_bundle(tmp_path / "b", cnn=cnn_checkpoint, sequence=seq_checkpoint, evaluation=evaluation_dir,
                     name="demo-model", version="9.9", training={"CNN": "test"},
                     training_sources=[{"source": "ct-ich", "patients": "all"},
                                       {"source": "rsna-series", "patients": "all"}])
    manifest = json.loads((b.root / "manifest.json").read_text())
    assert manifest["training_sources"] == [{"source": "ct-ich", "patients": "all"},
                                            {"source": "rsna-series", "patients": "all"}]
    assert b.trained_on("ct-ich", "071") is True and b.trained_on("rsna-series") is True
    doc = json.loads((evaluation_dir / "thresholds.json").read_text())
    thresholds = doc["scan"]
    assert b.thresholds["any"] == pytest.approx(thresholds["sensitivity"]["any"])
    assert doc["subtype_specificity"] == 0.9 and doc["policy"]["subtypes"] == "specificity >= 0.9"
    for lab in LABELS:  # the policy point: any at the sensitivity target, subtypes at the stated specificity
        assert b.thresholds[lab] == pytest.approx(thresholds["policy"][lab])
        assert manifest["slice_thresholds"][lab] == pytest.approx(doc["slice"]["policy"][lab])
    assert "specificity 0.90" in manifest["threshold_policy"]["subdural"]
    assert "slice-level sensitivity 0.95" in manifest["slice_threshold_policy"]["any"]
    # ichd predict --independent (each slice its own scan) calls with the slice-level points
    from ichd.inference.run import operating_thresholds

    p_bundle = Predictor.load(b.root, device="cpu")
    assert operating_thresholds(p_bundle, independent=True)[0] == manifest["slice_thresholds"]
    assert operating_thresholds(p_bundle, independent=False)[0] == b.thresholds
    assert b.aliases == ["default"] and set(b.files) == {"cnn", "sequence"}
    card = b.model_card()
    assert "Not a medical device" in card and "CT-ICH" in card and "| subdural (SDH) |" in card
    assert b.info()["metrics"]["scan"]["any"]["auc"] is not None
    p = Predictor.load(b.root, device="cpu")
    assert p.sequence is not None and p.sequence.cnn_checkpoint is None  # the CNN is shipped once
    assert p.predict_series(make_series(3)).slice_probs.shape == (3, 6)
    assert b.files["sequence"].stat().st_size < seq_checkpoint.stat().st_size


def _card(evaluation_dir: Path, training_sources, per_source=None) -> str:
    ev = CvEvaluation.read(evaluation_dir)
    thresholds, policy = ev.operating_thresholds()
    return render_model_card(name="m", version="1", architecture={"slice CNN": "x"}, summary=ev.summary(),
                             thresholds=thresholds, policy=policy, training={}, has_sequence=False,
                             training_sources=resolve_training_sources(training_sources), per_source=per_source)


def test_code_licence_is_read_from_metadata_and_matches_license_file():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert code_licence() == project["license"] == "MIT"
    assert (REPO / "LICENSE").read_text(encoding="utf-8").splitlines()[0].strip() == "MIT License"


def test_card_ctich_only_is_cc_by(evaluation_dir: Path):
    card = _card(evaluation_dir, [{"source": "ct-ich", "patients": "all"}])
    assert "**Licence of these weights**: CC BY 4.0 (derived from CT-ICH" in card
    assert "Licence of ichd's code**: MIT" in card and "Apache" not in card
    assert "non-commercial" not in card and "RSNA 2019" not in card and "rsna-series" not in card
    assert "82 patients in all (CT-ICH 82 patients)" in card
    assert "HU reconstructed from JPG windows" in card and "never seen real scanner HU" in card
    assert "doi:10.3390/data5010014" in card and "36 of 82 patients" in card
    assert "## Evaluation per source" not in card
    assert "Grad-CAM heat maps" in card and "not calibrated for other populations" in card


def test_card_with_rsna_series_is_non_commercial(evaluation_dir: Path):
    card = _card(evaluation_dir, [{"source": "ct-ich", "patients": "all"},
                                  {"source": "rsna-series", "patients": "all"}])
    assert ("**Licence of these weights**: research and non-commercial use only (RSNA 2019 terms), with CT-ICH's "
            "CC BY 4.0 attribution") in card
    assert "doi:10.1148/ryai.2020190211" in card and "third-party" in card and "676" in card
    assert "102 patients in all (CT-ICH 82 patients, RSNA 2019 20 patients)" in card
    assert "no epidural hemorrhage" in card and "rest on very few patients" in card
    assert "Real scanner HU only from RSNA 2019 (20 patients)" in card
    # rsna-series alone: no JPG reconstruction, still non-commercial
    card = _card(evaluation_dir, [{"source": "rsna-series", "patients": "all"}])
    assert "JPG" not in card and "CC BY" not in card
    assert "research and non-commercial use only (RSNA 2019 terms)." in card


def test_card_unknown_source_and_subset(evaluation_dir: Path):
    card = _card(evaluation_dir, [{"source": "ct-ich", "patients": ["049", "050"]},
                                  {"source": "my-hospital", "patients": "all"}])
    assert "**my-hospital** (all patients): provenance not recorded" in card
    assert "**Licence of these weights**: not determined: the terms of my-hospital are not recorded" in card
    assert "2 patient(s) only: 049, 050" in card and "an unrecorded number of patients" in card
    card = _card(evaluation_dir, None)
    assert "training data of these weights is not recorded" in card and "not determined" in card


def test_build_bundle_per_source(tmp_path: Path, cnn_checkpoint: Path, evaluation_dir: Path,
                                 source_evaluations: dict[str, Path]):
    sources = [{"source": "ct-ich", "patients": "all"}, {"source": "rsna-series", "patients": "all"}]
    b = build_bundle(tmp_path / "b", cnn=cnn_checkpoint, evaluation=evaluation_dir, name="multi", version="2.0.0",
                     training_sources=sources, source_evaluations=source_evaluations)
    manifest = json.loads((b.root / "manifest.json").read_text())
    assert manifest["license"] == ("weights: research and non-commercial use only (RSNA 2019 terms), with CT-ICH's "
                                   "CC BY 4.0 attribution; code: MIT")
    assert "CT-ICH 82 patients + RSNA 2019 20 patients, 102 patients in all" in manifest["description"]
    assert "non-commercial" in manifest["training_data"] and "CC BY 4.0" in manifest["training_data"]
    per_source = manifest["metrics"]["per_source"]
    assert set(per_source) == set(SOURCES)
    for name in SOURCES:
        m = json.loads((source_evaluations[name] / "metrics.json").read_text())
        got = per_source[name]
        assert got["counts"] == m["counts"] == {"slices": 24, "scans": 6, "patients": 6}
        assert got["weighted_log_loss"] == pytest.approx(m["rsna_weighted_log_loss"]["overall"])
        assert got["slice_any_auc"] == pytest.approx(m["slice"]["classes"]["any"]["auc"])
        assert got["scan_any_auc_ci95"] == pytest.approx(m["scan"]["classes"]["any"]["ci95"]["auc"])
        op = m["scan"]["classes"]["any"]["operating_points"]["sensitivity"]
        assert got["any_sensitivity"] == pytest.approx(op["sensitivity"])
        assert got["any_specificity"] == pytest.approx(op["specificity"])
        assert got["any_threshold"] == pytest.approx(b.thresholds["any"])
    card = b.model_card()
    assert "## Evaluation per source" in card
    assert f"shipped threshold {b.thresholds['any']:.4f}" in card
    ct = per_source["ct-ich"]
    row = next(line for line in card.splitlines() if line.startswith("| CT-ICH (`ct-ich`) |"))
    assert row.startswith("| CT-ICH (`ct-ich`) | 6 | 6 | 24 | ")
    assert f"{ct['scan_any_auc']:.3f}" in row and f"{ct['any_sensitivity']:.3f}" in row
    assert any(line.startswith("| RSNA 2019 (`rsna-series`) | 6 | 6 | 24 | ") for line in card.splitlines())


def test_source_evaluations_are_checked(tmp_path: Path, cnn_checkpoint: Path, evaluation_dir: Path,
                                        source_evaluations: dict[str, Path]):
    ctich = [{"source": "ct-ich", "patients": "all"}]
    with pytest.raises(InputError, match="not one of the training sources"):
        build_bundle(tmp_path / "a", cnn=cnn_checkpoint, evaluation=evaluation_dir, training_sources=ctich,
                     source_evaluations={"rsna-series": source_evaluations["rsna-series"]})
    with pytest.raises(InputError, match="evaluates source 'rsna-series', not 'ct-ich'"):
        build_bundle(tmp_path / "b", cnn=cnn_checkpoint, evaluation=evaluation_dir, training_sources=ctich,
                     source_evaluations={"ct-ich": source_evaluations["rsna-series"]})
    own = tmp_path / "own-thresholds"  # as if evaluated without --thresholds-from: other scan thresholds
    shutil.copytree(source_evaluations["ct-ich"], own)
    t = json.loads((own / "thresholds.json").read_text())
    t["scan"]["sensitivity"]["any"] = 0.5 * (t["scan"]["sensitivity"]["any"] or 1.0)
    (own / "thresholds.json").write_text(json.dumps(t))
    with pytest.raises(InputError, match="scan thresholds differ") as e:
        build_bundle(tmp_path / "c", cnn=cnn_checkpoint, evaluation=evaluation_dir, training_sources=ctich,
                     source_evaluations={"ct-ich": own})
    assert "--thresholds-from" in (e.value.hint or "")


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_bundle_script", REPO / "scripts" / "build_bundle.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_options(tmp_path: Path, cnn_checkpoint: Path, evaluation_dir: Path,
                        source_evaluations: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    script = _script()
    assert script.parse_training_source("ct-ich") == {"source": "ct-ich", "patients": "all"}
    assert script.parse_training_source("rsna-series:all") == {"source": "rsna-series", "patients": "all"}
    assert script.parse_training_source("ct-ich:049, 050") == {"source": "ct-ich", "patients": ["049", "050"]}
    with pytest.raises(ValueError):
        script.parse_training_source(":all")
    with pytest.raises(ValueError):
        script.parse_source_evaluations(["ct-ich"])
    out = tmp_path / "bundle"
    monkeypatch.setattr("sys.argv", [
        "build_bundle.py", "--cnn", str(cnn_checkpoint), "--evaluation", str(evaluation_dir), "--name", "multi",
        "--version", "2.0.0", "--out", str(out), "--training-source", "ct-ich:all",
        "--training-source", "rsna-series", "--source-evaluation", f"ct-ich={source_evaluations['ct-ich']}",
        "--source-evaluation", f"rsna-series={source_evaluations['rsna-series']}"])
    assert script.main() == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_sources"] == [{"source": "ct-ich", "patients": "all"},
                                            {"source": "rsna-series", "patients": "all"}]
    assert set(manifest["metrics"]["per_source"]) == set(SOURCES)
    assert "non-commercial" in manifest["license"] and "code: MIT" in manifest["license"]


def test_measured_limits_are_listed_first_in_the_card() -> None:
    from ichd.inference.bundle_build import _limits_section

    text = _limits_section(None, ["misses 6 of 7 bleeds on real DICOM"])
    assert text.splitlines()[0] == "- misses 6 of 7 bleeds on real DICOM"


def test_model_card_method_names_a_frozen_encoder_and_its_context_head():
    from types import SimpleNamespace

    from ichd.inference.bundle_build import _method_text

    frozen = SimpleNamespace(model_name="frozen_encoder", default_cfg={"encoder": "Lite0@256 (head, avg pool)"})
    method, kind = _method_text(frozen, {"sequence_model": "seq_context_linear",
                                         "sequence_config": {"context": 1}}, "max")
    assert "frozen ImageNet encoder (Lite0@256" in method and "mean of its 1 neighbour" in method
    assert kind == "frozen encoder + neighbour-context head"
    cnn = SimpleNamespace(model_name="efficientnet_lite0", default_cfg={})
    assert _method_text(cnn, None, "max") == (None, "slice CNN")
