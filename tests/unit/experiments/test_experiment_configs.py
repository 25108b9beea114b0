"""Experiment configs (configs/experiments/*.yaml), profiles and overrides, the catalog's names, the PCA baseline
pipeline, the comparison table and the clinical table; `ichd experiments list/run/compare` errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ichd.cli.main import run
from ichd.errors import ConfigError, InputError
from ichd.experiments.catalog import experiment_files, find_experiment
from ichd.experiments.config import BaselineConfig, deep_merge, load_experiment, set_dotted

REPO = Path(__file__).resolve().parents[3]
EXPERIMENTS = REPO / "configs" / "experiments"
#: The rows the issue asks for (the default model's Lite0 row as the reference).
EXPECTED = {"default_lite0", "burduja_effnet_b4", "burduja_resnext101", "lrcn_pca_logreg", "lrcn_pca_rf",
            "lrcn_vgg19_bilstm", "radnet_densenet_bilstm", "danilov_seresnext50_tta", "progressive_resnet18",
            "progressive_resnet50", "progressive_custom_cnn", "jpg_vs_dicom_ctich_jpg", "jpg_vs_dicom_rsna_dicom"}


def test_every_row_is_there_and_loads_with_and_without_its_cpu_profile() -> None:
    files = experiment_files(EXPERIMENTS)
    assert set(files) == EXPECTED
    for name, path in files.items():
        for profile in (None, "cpu"):
            exp = load_experiment(path, profile=profile)
            cfg = exp.cnn_config()
            assert exp.name == name and exp.published and exp.runs and exp.init, name
            # the same patient folds for every row: the default model's
            assert cfg.data.folds_file == "benchmarks/results/cnn_multi_256/folds.csv" and cfg.data.folds == 5
            if exp.kind == "pca_baseline":
                assert exp.init.startswith("none")
            elif cfg.model.name.startswith("efficientnet_lite"):
                assert cfg.model.pretrained and "ImageNet" in exp.init
            else:  # no offline weights: random init, and the row says so
                assert not cfg.model.pretrained and exp.init.startswith("random"), name
                assert "cnn.model.weights" in exp.init or "progressive" in name, name
            if profile == "cpu":
                assert cfg.data.cache == "cache/multi-128", name


def test_rows_configure_what_their_papers_need() -> None:
    def load(name: str):
        return load_experiment(EXPERIMENTS / f"{name}.yaml")

    lrcn = load("lrcn_vgg19_bilstm")
    assert lrcn.cnn_config().targets == "any" and lrcn.seq_config().targets == "any"
    assert lrcn.cnn_config().model.name == "vgg19" and lrcn.cnn_config().data.cache == "cache/multi-128"
    radnet = load("radnet_densenet_bilstm")
    assert radnet.cnn_config().data.masks == ["hu-slices"] and radnet.cnn_config().optim.optimizer == "sgd"
    assert radnet.seq_config().scan_rule == "consecutive" and radnet.seq_config().min_run == 3
    lrs = radnet.cnn_config().optim.lr_per_epoch
    assert len(lrs) == 60 and lrs[19] == 1e-2 and lrs[20] == 1e-3 and lrs[40] == 1e-4  # /10 at 1/3 and 2/3
    danilov = load("danilov_seresnext50_tta")
    assert danilov.cnn_config().tta and danilov.evaluation.clinical_table
    for name in ("progressive_resnet18", "progressive_resnet50", "progressive_custom_cnn"):
        sizes = load(name).cnn_config().optim.image_size_per_epoch
        assert sizes == [64] * 5 + [128] * 5 + [256] * 4, name
    jpg, dicom = load("jpg_vs_dicom_ctich_jpg").cnn_config(), load("jpg_vs_dicom_rsna_dicom").cnn_config()
    assert jpg.data.labels == "ct-ich/labels.csv" and dicom.data.labels == "rsna-series/labels.csv"
    assert jpg.model == dicom.model and jpg.optim == dicom.optim  # the same model and schedule
    assert load("lrcn_pca_rf").baseline == BaselineConfig(classifier="random_forest", components=200,
                                                          image_size=128, n_estimators=100, seed=0)
    default = load("default_lite0").cnn_config()
    from ichd.training.config import load_cnn_config

    base = load_cnn_config(REPO / "configs" / "cnn_multi_256.yaml")
    base.data.folds_file = default.data.folds_file
    assert default == base  # the reference row is the default model's config


def test_overrides_profiles_and_names(tmp_path: Path) -> None:
    path = EXPERIMENTS / "progressive_resnet18.yaml"
    exp = load_experiment(path, profile="cpu", overrides={"cnn.optim.batch_size": 8, "evaluation.bootstrap": 50})
    assert exp.cnn_config().optim.batch_size == 8 and exp.evaluation.bootstrap == 50
    assert exp.cnn_config().optim.image_size_per_epoch == [64, 64, 128, 128] and exp.profile == "cpu"
    with pytest.raises(ConfigError, match="no profile 'cpus'; did you mean 'cpu'"):
        load_experiment(path, profile="cpus")
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_experiment(path, overrides={"cnn.optim.batchsize": 8})
    with pytest.raises(ConfigError, match="did you mean 'progressive_resnet18'"):
        find_experiment("progresive_resnet18", EXPERIMENTS)
    (tmp_path / "other.yaml").write_text(path.read_text())
    with pytest.raises(ConfigError, match="differs from the file name"):
        load_experiment(tmp_path / "other.yaml")
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}, "d": None}) == {"a": {"b": 1, "c": [2]},
                                                                                   "d": None}
    doc: dict = {"a": 1}
    with pytest.raises(ConfigError, match="not a mapping"):
        set_dotted(doc, "a.b", 2)


def test_pca_pipeline_caps_components_and_counts_parameters() -> None:
    from ichd.experiments.baselines import count_parameters, make_pipeline

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 50)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    x[:, 1] += 3 * y
    for clf in ("logreg", "random_forest"):
        pipe, k = make_pipeline(BaselineConfig(classifier=clf, components=200, n_estimators=5), 30, 50)
        assert k == 29  # at most n_samples - 1
        pipe.fit(x, y)
        assert pipe.score(x, y) > 0.8 and count_parameters(pipe) > 29 * 50
    with pytest.raises(InputError, match="at least 2"):
        make_pipeline(BaselineConfig(), 1, 50)


def _summary(name: str, stage: str, **extra: object) -> dict:
    metric = {"weighted_log_loss": 0.21, "weighted_log_loss_ci95": [0.2, 0.3], "parameters": 4_482_214,
              "slice_any": {"auc": 0.8, "auc_ci95": [0.7, 0.9],
                            "at_0.5": {"accuracy": 0.85, "sensitivity": 0.5, "specificity": 0.9}},
              "scan_any": {"auc": 0.75, "auc_ci95": None, "at_sensitivity": {"sensitivity": 0.95,
                                                                              "specificity": 0.4}},
              "train_ms_per_slice": 49.2, "infer_ms_per_slice": 17.4, **extra}
    return {"name": name, "method": "custom CNN", "paper": "Caceres et al.", "init": "random",
            "settings": {"image_size": 128, "image_size_per_epoch": [64, 64, 128, 128], "epochs": 4,
                         "epoch_samples": 1280, "folds": [0, 1, 2, 3, 4], "n_folds": 5, "targets": "any",
                         "profile": "cpu"},
            "stages": {stage: metric},
            "published": [{"metric": "accuracy", "value": "65.91 %", "where": "section 5.2", "data": "RSNA JPG"}]}


def test_comparison_table(tmp_path: Path) -> None:
    from ichd.experiments.compare import comparison_markdown, write_comparison

    text = comparison_markdown([_summary("progressive_custom_cnn", "cnn")])
    lines = text.splitlines()
    assert lines[0].startswith("| experiment | stage |") and "paper's own published numbers" in lines[0]
    row = lines[2]
    for part in ("progressive_custom_cnn", "slice CNN", "64 → 128 px", "4 ep × 1280 slices", "any only†",
                 "0.2100 [0.2000, 0.3000]", "0.800 [0.700, 0.900]", "0.750", "0.850 / 0.500 / 0.900",
                 "0.400 (sens 0.950)", "4.48M", "49.2", "`ichd experiments run progressive_custom_cnn --profile cpu`",
                 "accuracy 65.91 % (section 5.2, RSNA JPG)"):
        assert part in row, part
    one_fold = _summary("radnet_densenet_bilstm", "cnn")
    one_fold["settings"].update(folds=[0], overrides={"cnn.model.pretrained": True, "cnn.optim.lr_per_epoch": [3e-4]})
    assert ("`ichd experiments run radnet_densenet_bilstm --profile cpu --folds 0 --set cnn.model.pretrained=true "
            "--set 'cnn.optim.lr_per_epoch=[0.0003]'`") in comparison_markdown([one_fold])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(_summary("x", "seq", seq_train_predict_ms_per_slice=1.5,
                                                              embed_ms_per_slice=20.0)))
    out = write_comparison([run_dir], tmp_path / "table.md")
    assert "+ sequence model" in out.read_text() and "| 1.5 | 20.0 |" in out.read_text()
    with pytest.raises(InputError, match="no summary.json"):
        write_comparison([tmp_path / "absent"], tmp_path / "t.md")


def test_clinical_rows() -> None:
    from ichd.constants import LABELS
    from ichd.experiments.clinical import DANILOV_TABLE_1, clinical_markdown, clinical_rows

    point = {"accuracy": 0.9, "sensitivity": 0.6, "specificity": 0.95, "precision": 0.7, "threshold": 0.5}
    cls = {"n_positive": 3, "n_negative": 17, "auc": 0.8, "log_loss": 0.3,
           "operating_points": {"0.5": point, "youden": point, "sensitivity": point}}
    rows = clinical_rows({"scan": {"classes": dict.fromkeys(LABELS, cls)}})
    assert [r["label"] for r in rows] == list(LABELS) and rows[1]["specificity"] == 0.95 and rows[1]["pos"] == 3
    text = clinical_markdown(rows, level="scan", stage="cnn")
    assert "| epidural | 3 | 17 | 0.900 | 0.700 | 0.600 | 0.950 | 0.800 | 0.300 |" in text
    assert "| epidural | 99 | 302 | 0.828 |" in text and set(DANILOV_TABLE_1) == set(LABELS[1:])
    with pytest.raises(InputError, match="no scan-level"):
        clinical_rows({"scan": None})


def test_cli_list_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(["experiments", "list", "--dir", str(EXPERIMENTS)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPECTED) and "init:   random" in out
    assert run(["experiments", "list", "--json", "--dir", str(EXPERIMENTS)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == EXPECTED and all(r["paper"] and r["init"] for r in rows)
    assert run(["experiments", "run", "radnet_densnet_bilstm", "--dir", str(EXPERIMENTS)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'radnet_densenet_bilstm'" in err and "Traceback" not in err
    assert run(["experiments", "run", "lrcn_pca_rf", "--dir", str(EXPERIMENTS), "--folds", "0,x"]) == 2
    assert "--folds '0,x' must be fold numbers" in capsys.readouterr().err
    assert run(["experiments", "run", "lrcn_pca_rf", "--dir", str(EXPERIMENTS), "--folds", "7",
                "--set", f"cnn.data.cache={tmp_path}"]) == 2
    assert "folds [7] are not in 0..4" in capsys.readouterr().err
    assert run(["experiments", "run", "lrcn_pca_rf", "--dir", str(EXPERIMENTS), "--out", str(tmp_path / "o"),
                "--set", f"cnn.data.cache={tmp_path / 'nocache'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(["experiments", "list", "--dir", str(tmp_path / "none")]) == 2
    assert "no experiments folder" in capsys.readouterr().err
