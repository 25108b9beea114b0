"""scripts/gpu_cv.py (the GPU recipe of issue 20 item 4) in its CPU smoke mode: pack a tiny synthetic cache,
run the 5-fold CV with ``--max-steps`` through the real trainer, and check the outputs the GPU run brings back."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ichd.constants import LABELS
from model_factories import make_training_data

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "gpu_cv.py"
ID_COLUMNS = ["slice_id", "scan_id", "patient_id", "slice_index", "fold"]


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240, check=False)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 px cache of 7 synthetic CT-ICH patients, its labels and config, packed with Lite0's weights."""

    root = tmp_path_factory.mktemp("gpu_cv")
    patients = {p: 3 for p in range(49, 56)}
    make_training_data(root, patients)
    base = yaml.safe_load((ROOT / "configs" / "cnn_multi_256.yaml").read_text())
    base["data"].update({"labels": [str(root / "labels.csv")], "sources": ["ct-ich"], "source_share": None,
                         "folds": 3})  # 3 folds x 2 repeats: 6 fold processes keep the test fast
    (root / "cfg.yaml").write_text(yaml.safe_dump(base))
    proc = _script("pack", "--cache", str(root / "cache"), "--out", str(root / "data"), "--config",
                   str(root / "cfg.yaml"), "--models", "efficientnet_lite0", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "64 px: 7 series, 21 slices" in proc.stdout
    return root


def test_pack_is_byte_exact_and_complete(packed: Path) -> None:
    doc = json.loads((packed / "data" / "pack.json").read_text())
    assert doc["format"] == "ichd-gpu-pack/1" and list(doc["caches"]) == ["64"]
    manifest = json.loads((packed / "cache" / "manifest.json").read_text())
    with zipfile.ZipFile(packed / "data" / doc["caches"]["64"]["parts"][0]) as zf:
        for entry in manifest["series"]:
            assert zf.read(entry["file"]) == (packed / "cache" / entry["file"]).read_bytes()
    assert (packed / "data" / "labels" / "ct-ich.csv").read_bytes() == (packed / "labels.csv").read_bytes()
    assert doc["weights"] == {"efficientnet_lite0": "weights/efficientnet_lite0.pt"}


def test_smoke_run_writes_oof_and_loadable_fold_weights(packed: Path) -> None:
    import torch

    from ichd.models.checkpoint import load_checkpoint

    out = packed / "out"
    proc = _script("run", "--data", str(packed / "data"), "--out", str(out), "--config", str(packed / "cfg.yaml"),
                   "--device", "cpu", "--models", "efficientnet_lite0", "--repeats", "2", "--epochs", "15",
                   "--max-steps", "1", "--batch-size", "4", "--procs", "2", "--workers", "0",
                   "--measure-steps", "1", "--measure-slices", "4", "--budget-min", "10",
                   "--work", str(packed / "work"), cwd=packed)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "plan: efficientnet_lite0 64 px x 2 repeats" in proc.stdout
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    assert files == ["oof.zip", "run.log", "summary.json"] + [f"weights-efficientnet_lite0-64-fold{k}.pt"
                                                               for k in range(3)]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["settings"]) == {"efficientnet_lite0-64-r0", "efficientnet_lite0-64-r1"}
    assert summary["skipped"] == [] and summary["best"]["model"] == "efficientnet_lite0"
    assert summary["lr_per_epoch"][0] == pytest.approx(1e-3) and len(summary["lr_per_epoch"]) == 15
    folds_by_repeat = []
    with zipfile.ZipFile(out / "oof.zip") as zf:
        assert sorted(zf.namelist()) == ["oof-efficientnet_lite0-64-r0.csv", "oof-efficientnet_lite0-64-r1.csv"]
        for name in sorted(zf.namelist()):
            oof = pd.read_csv(io.BytesIO(zf.read(name)), dtype={"slice_id": str})
            assert list(oof.columns) == [*ID_COLUMNS, "source", *LABELS]
            assert len(oof) == 21 and oof["slice_id"].is_unique and set(oof["fold"]) == set(range(3))
            assert oof[list(LABELS)].to_numpy().min() > 0 and oof[list(LABELS)].to_numpy().max() < 1
            folds_by_repeat.append(oof.set_index("slice_id")["fold"])
    assert not folds_by_repeat[0].equals(folds_by_repeat[1].reindex(folds_by_repeat[0].index))  # fold seeds differ
    fold_cfg = yaml.safe_load((packed / "work" / "runs" / "efficientnet_lite0-64-r1" / "fold0" / "config.yaml")
                              .read_text())
    assert fold_cfg["data"]["fold_seed"] == 43 and fold_cfg["data"]["epoch_samples"] is None
    assert fold_cfg["data"]["balanced_sampling"] is False and fold_cfg["optim"]["max_steps"] == 1
    ck = load_checkpoint(out / "weights-efficientnet_lite0-64-fold0.pt")
    assert ck.model_name == "efficientnet_lite0" and ck.raw["weights_dtype"] == "float16" and ck.fold == 0
    with torch.no_grad():
        p = torch.sigmoid(ck.model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)))
    assert p.shape == (1, len(LABELS))


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    proc = _script("run", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not a pack (no pack.json)" in proc.stderr and "gpu_cv.py pack" in proc.stderr
    proc = _script("run", "--data", str(tmp_path), "--out", str(tmp_path / "o2"), "--repeats", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--repeats must be >= 1" in proc.stderr
