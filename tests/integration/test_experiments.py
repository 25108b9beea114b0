"""Every experiment of configs/experiments/ runs end to end on a few real slices (`ichd experiments run` with
--max-steps 2): a tiny 64 px cache of 4 CT-ICH patients (two with hemorrhage, one of them with hu-slices masks)
and 2 rsna-series DICOM series, 2 patient folds, 2 optimizer steps per model. Checks that the outputs of the
default training (config, checkpoints, metrics.json, oof.csv), the evaluation and summary.json are written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ichd.constants import LABELS

CTICH_PATIENTS = [50, 62, 64, 85]  # 50 and 85 with hemorrhage; 50 has two masked hu-slices slices
RSNA_SERIES = ["ID_6254afb327", "ID_9d97cf289b"]  # one with hemorrhage, one without
EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "configs" / "experiments"
#: Experiments with a sequence stage (it needs every CNN fold, or exactly one).
SEQUENCE_EXPERIMENTS = {"default_lite0", "lrcn_vgg19_bilstm", "radnet_densenet_bilstm"}
#: Every experiment file (ResNeXt-101 included: ~15 s, ~1.4 GB of checkpoints written to the temporary folder).
NAMES = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


@pytest.fixture(autouse=True)
def _one_thread():
    from model_factories import single_thread_torch

    yield from single_thread_torch()


@pytest.fixture(scope="module")
def tiny_cache(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig

    for sub in ("ct-ich", "rsna-series", "hu-slices"):
        if not (data_root / sub).is_dir():
            pytest.skip(f"{sub} not in the data folder")
    out = tmp_path_factory.mktemp("experiments") / "cache-64"
    cfg = PreprocessConfig(image_size=64)
    assert not build_cache([data_root / "ct-ich"], out, cfg, workers=1, patients=CTICH_PATIENTS).failed
    series = [data_root / "rsna-series" / "dicom" / s for s in RSNA_SERIES]
    assert not build_cache(series, out, cfg, workers=1).failed
    return out


def tiny_overrides(name: str, cache: Path) -> dict[str, object]:
    """The experiment as configured, on the tiny cache: 2 computed folds, small batches and epochs."""
    sets: dict[str, object] = {"cnn.data.cache": str(cache), "cnn.data.folds": 2, "cnn.data.folds_file": None,
                               "cnn.data.epoch_samples": 8, "cnn.optim.batch_size": 4, "cnn.threads": 1,
                               "cnn.val_every": 100, "evaluation.bootstrap": 10, "baseline.components": 10}
    if name in SEQUENCE_EXPERIMENTS:
        sets.update({"sequence.threads": 1, "sequence.optim.val_fraction": 0.0, "sequence.selector.k": 8})
    if "progressive" in name:
        sets["cnn.optim.image_size_per_epoch"] = [32, 64]
        sets["cnn.optim.lr_per_epoch"] = [1e-3, 1e-4]
    return sets


@pytest.mark.parametrize("name", NAMES)
def test_experiment_runs_two_steps(name: str, tiny_cache: Path, tmp_path: Path) -> None:
    from ichd.experiments.config import load_experiment
    from ichd.experiments.runner import RunOptions, run_experiment

    exp = load_experiment(EXPERIMENTS_DIR / f"{name}.yaml", overrides=tiny_overrides(name, tiny_cache))
    folds = None if name in SEQUENCE_EXPERIMENTS else [0]
    out = tmp_path / name
    summary = run_experiment(exp, RunOptions(folds=folds, max_steps=2, out=out))

    assert json.loads((out / "summary.json").read_text())["name"] == name
    assert (out / "experiment.yaml").is_file()
    stage_dir = out / ("baseline" if exp.kind == "pca_baseline" else "cnn")
    fold0 = stage_dir / "fold0"
    for f in ("config.yaml", "metrics.json", "oof.csv"):
        assert (fold0 / f).is_file(), f
    assert (fold0 / ("model.joblib" if exp.kind == "pca_baseline" else "final.pt")).is_file()
    oof = pd.read_csv(stage_dir / "oof.csv")
    assert list(oof.columns[:5]) == ["slice_id", "scan_id", "patient_id", "slice_index", "fold"]
    assert oof[list(LABELS)].notna().all().all()
    expected_stages = {"baseline"} if exp.kind == "pca_baseline" else {"cnn"}
    if name in SEQUENCE_EXPERIMENTS:
        expected_stages.add("seq")
        assert (out / "seq" / "oof_scans.csv").is_file() and (out / "embed" / "oof.npz").is_file()
    assert set(summary["stages"]) == expected_stages
    for stage, m in summary["stages"].items():
        assert (out / "eval" / stage / "metrics.json").is_file()
        assert m["weighted_log_loss"] > 0 and m["parameters"] > 0
        assert 0 < m["slice_any"]["n"] <= len(pd.read_csv(m["oof_csv"]))  # minus slices without labels
    cnn = summary["stages"].get("cnn") or summary["stages"]["baseline"]
    assert cnn["train_ms_per_slice"] > 0 and cnn["infer_ms_per_slice"] > 0
    if exp.kind == "cnn":
        metrics = json.loads((fold0 / "metrics.json").read_text())
        assert sum(h["train/n"] for h in metrics["history"]) == 2 * 4  # 2 steps of batch 4
        assert summary["settings"]["max_steps"] == 2
    if exp.cnn_config().targets == "any" or exp.kind == "pca_baseline":  # binary: subtypes at the prevalence
        assert oof.groupby("fold")[list(LABELS[1:])].nunique().to_numpy().max() == 1
    if name == "radnet_densenet_bilstm":
        masks = summary["stages"]["cnn"]["masks"]
        assert masks["slices_with_masks"] == 2 and masks["patients_with_masks"] == 1
        assert sorted(masks["training_slices_with_masks_per_fold"].values()) == [0, 2]
        assert summary["settings"]["sequence"]["scan_rule"] == "consecutive"
    if name == "danilov_seresnext50_tta":
        assert "Table 1" in (out / "clinical_table.md").read_text()
        assert summary["settings"]["tta"] is True
    shutil.rmtree(out)  # checkpoints of the big networks: up to 1.4 GB (kept when an assertion above fails)


def test_sequence_stage_on_one_cnn_fold(tiny_cache: Path, tmp_path: Path) -> None:
    """--folds 0 of an experiment with a sequence stage: fold 0's CNN embeds every scan, the sequence model
    trains on fold 1's scans and predicts fold 0's only."""
    from ichd.experiments.config import load_experiment
    from ichd.experiments.runner import RunOptions, run_experiment

    exp = load_experiment(EXPERIMENTS_DIR / "default_lite0.yaml", overrides=tiny_overrides("default_lite0", tiny_cache))
    out = tmp_path / "one_fold"
    summary = run_experiment(exp, RunOptions(folds=[0], max_steps=2, out=out))

    assert set(summary["stages"]) == {"cnn", "seq"}
    assert not (out / "cnn" / "fold1").exists()
    folds = pd.read_csv(out / "cnn" / "folds.csv", dtype={"patient_id": str}).set_index("patient_id")["fold"]
    seq_scans = pd.read_csv(out / "seq" / "oof_scans.csv", dtype={"patient_id": str})
    cnn_oof = pd.read_csv(out / "cnn" / "oof.csv", dtype={"patient_id": str})
    assert set(seq_scans["scan_id"]) == set(cnn_oof["scan_id"])  # fold 0's scans, tested out of sample
    assert set(seq_scans["patient_id"].map(folds)) == {0}
    meta = json.loads((out / "seq" / "metrics.json").read_text())
    assert meta["folds"] == [0]
    assert any("sequence stage on one CNN fold" in n for n in summary["notes"])

    # The comparison re-evaluated on fold 0's patients (the test set of runs that trained different folds)
    from ichd.errors import InputError
    from ichd.experiments.compare import write_comparison

    table = write_comparison([out], tmp_path / "cmp.md", folds=[0]).read_text()
    assert "evaluated on the patients of fold(s) 0 only" in table and table.count("| default_lite0 |") == 2
    for stage in ("cnn", "seq"):
        assert (tmp_path / "cmp_eval" / "one_fold" / stage / "eval" / "metrics.json").is_file()
    with pytest.raises(InputError, match="no predictions for"):
        write_comparison([out], tmp_path / "cmp1.md", folds=[1])


def test_cli_run_with_a_weights_file(tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ichd experiments run NAME --weights FILE`: the fold models start from the file (a custom-CNN backbone)."""
    import torch

    from ichd.cli.main import run
    from ichd.models import create_model
    from ichd.models.checkpoint import load_checkpoint

    torch.manual_seed(5)
    source = create_model("caceres_cnn", input_size=64).backbone.state_dict()
    torch.save(source, tmp_path / "custom.pth")
    sets = [f"{k}={json.dumps(v)}" for k, v in tiny_overrides("progressive_custom_cnn", tiny_cache).items()]
    args = ["-q", "experiments", "run", "progressive_custom_cnn", "--dir", str(EXPERIMENTS_DIR), "--folds", "0",
            "--max-steps", "1", "--out", str(tmp_path / "run"), "--weights", str(tmp_path / "custom.pth")]
    for item in [*sets, "cnn.optim.lr_per_epoch=[1.0e-12, 1.0e-12]"]:  # the last --set of a key wins
        args += ["--set", item]
    assert run(args) == 0, capsys.readouterr().err
    assert "progressive_custom_cnn / cnn: weighted log loss" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "run" / "cnn" / "fold0" / "final.pt")
    assert ckpt.raw["default_cfg"]["pretrained"] == "file:custom.pth"  # where its weights came from
    trained = ckpt.model.backbone.state_dict()
    assert torch.allclose(trained["body.conv1a.weight"], source["body.conv1a.weight"], atol=1e-6)  # lr ~ 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["settings"]["weights"] == str(tmp_path / "custom.pth") and summary["settings"]["folds"] == [0]
    assert run(["experiments", "run", "progressive_custom_cnn", "--dir", str(EXPERIMENTS_DIR), "--weights",
                str(tmp_path / "absent.pth")]) == 2
    assert "not found" in capsys.readouterr().err
