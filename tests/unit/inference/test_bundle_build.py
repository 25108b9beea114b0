"""build_bundle: from checkpoints + an `ichd evaluate` folder to a loadable bundle with thresholds and a card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichd.cli.main import run
from ichd.constants import LABELS
from ichd.inference.bundle_build import build_bundle
from ichd.inference.predictor import Predictor


@pytest.fixture(scope="module")
def evaluation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ichd evaluate` run on synthetic OOF predictions of 12 scans (6 positive for any and subdural)."""
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
    out = root / "evaluation"
    assert run(["-q", "evaluate", str(root / "oof.csv"), str(root / "labels.csv"), "--out", str(out),
                "--bootstrap", "20", "--no-plots"]) == 0
    return out


def test_build_bundle_with_sequence(tmp_path: Path, cnn_checkpoint: Path, seq_checkpoint: Path,
                                    evaluation_dir: Path, make_series):
    import json

    b = build_bundle(tmp_path / "b", cnn=cnn_checkpoint, sequence=seq_checkpoint, evaluation=evaluation_dir,
                     name="demo-model", version="9.9", training={"CNN": "test"},
                     training_sources=[{"source": "ct-ich", "patients": "all"},
                                       {"source": "rsna-series", "patients": "all"}])
    manifest = json.loads((b.root / "manifest.json").read_text())
    assert manifest["training_sources"] == [{"source": "ct-ich", "patients": "all"},
                                            {"source": "rsna-series", "patients": "all"}]
    assert b.trained_on("ct-ich", "071") is True and b.trained_on("rsna-series") is True
    thresholds = json.loads((evaluation_dir / "thresholds.json").read_text())["scan"]
    assert b.thresholds["any"] == pytest.approx(thresholds["sensitivity"]["any"])
    assert b.thresholds["subdural"] == pytest.approx(thresholds["youden"]["subdural"])
    assert b.aliases == ["default"] and set(b.files) == {"cnn", "sequence"}
    card = b.model_card()
    assert "Not a medical device" in card and "CT-ICH" in card and "| subdural (SDH) |" in card
    assert b.info()["metrics"]["scan"]["any"]["auc"] is not None
    p = Predictor.load(b.root, device="cpu")
    assert p.sequence is not None and p.sequence.cnn_checkpoint is None  # the CNN is shipped once
    assert p.predict_series(make_series(3)).slice_probs.shape == (3, 6)
    assert b.files["sequence"].stat().st_size < seq_checkpoint.stat().st_size
