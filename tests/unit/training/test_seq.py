"""train_seq on a synthetic OOF embedding table: folds, selector isolation, outputs, checkpoints, learning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ichd.constants import LABELS
from ichd.errors import ConfigError, InputError
from ichd.inference.embed import NO_FOLD, EmbeddingTable
from ichd.models.feature_selection import FeatureSelector, SelectorConfig
from ichd.models.sequence import SeqModelConfig, load_sequence_checkpoint
from ichd.training.seq import SeqOptimConfig, SeqTrainConfig, load_seq_config, train_seq

D = 16


def synthetic_table(n_scans: int = 20, n_folds: int = 4, seed: int = 0) -> tuple[EmbeddingTable, np.ndarray]:
    """Scans of 6-12 slices; every other scan has a 3-slice epidural bleed that features 0-3 show; CNN probs weak."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("slice_id", "scan_id", "patient_id", "slice_index", "fold")}
    feats, labels = [], []
    for s in range(n_scans):
        n = int(rng.integers(6, 13))
        y = np.zeros((n, 6), np.float32)
        if s % 2 == 0:
            a = int(rng.integers(0, n - 3))
            y[a:a + 3, 0] = 1
            y[a:a + 3, 1] = 1
        f = rng.normal(size=(n, D)).astype(np.float32)
        f[:, :4] += 3.0 * y[:, :1]
        feats.append(f)
        labels.append(y)
        for i in range(n):
            cols["slice_id"].append(f"p{s:03d}-{i:03d}")
            cols["scan_id"].append(f"scan{s:03d}")
            cols["patient_id"].append(f"p{s:03d}")
            cols["slice_index"].append(i)
            cols["fold"].append(s % n_folds)
    f = np.concatenate(feats)
    y = np.concatenate(labels)
    probs = np.clip(0.3 * y + 0.1 + 0.05 * rng.normal(size=y.shape), 0.01, 0.99).astype(np.float32)
    heads = {k: rng.normal(size=(6, D)).astype(np.float32) for k in range(n_folds)}
    table = EmbeddingTable(*(np.asarray(cols[k]) for k in ("slice_id", "scan_id", "patient_id")),
                           np.asarray(cols["slice_index"]), np.asarray(cols["fold"]), f, probs, heads,
                           {"mode": "oof", "model_name": "synthetic"})
    return table, y


def _cfg(tmp_path, **kw) -> SeqTrainConfig:
    base = {"out": str(tmp_path / "run"), "selector": SelectorConfig("pca", k=8),
                "model": SeqModelConfig(hidden=16, layers=2, dropout=0.1),
                "optim": SeqOptimConfig(epochs=15, lr=3e-3, batch_scans=2, seeds=[0]), "device": "cpu"}
    base.update(kw)
    return SeqTrainConfig(**base)


def test_cv_outputs_folds_and_learning(tmp_path):
    torch.set_num_threads(1)
    table, y = synthetic_table(n_scans=24)
    res = train_seq(_cfg(tmp_path), table=table, labels=y, n_boot=50)
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert list(oof.columns) == ["slice_id", "scan_id", "patient_id", "slice_index", "fold", *LABELS]
    assert len(oof) == len(table) and set(oof["slice_id"]) == set(table.slice_id)
    # every row is predicted by the model of its own (CNN) fold
    fold_of = dict(zip(table.slice_id, table.fold))
    assert all(fold_of[s] == f for s, f in zip(oof["slice_id"], oof["fold"]))
    scans = pd.read_csv(tmp_path / "run" / "oof_scans.csv")
    assert len(scans) == 24 and scans["y_any"].sum() == 12
    m = res.metrics
    assert set(m["ci95"]) == {"weighted_log_loss", "slice_auc_any", "scan_auc_any"}
    # the features carry the signal: the sequence model beats the weak CNN probabilities
    from ichd.evaluation.metrics import weighted_log_loss

    rows = [list(table.slice_id).index(s) for s in oof["slice_id"]]
    assert m["weighted_log_loss"] < weighted_log_loss(y[rows], table.probs[rows])
    assert m["slice_auc_any"] > 0.9
    assert len(res.checkpoints) == 4 and (tmp_path / "run" / "metrics.json").is_file()


def test_selector_fitted_on_training_folds_only(tmp_path, monkeypatch):
    table, y = synthetic_table(n_scans=12, n_folds=3)
    seen: list[np.ndarray] = []
    original = FeatureSelector.fit

    def spy(self, x, *, head_weight=None):
        seen.append(np.asarray(x))
        return original(self, x, head_weight=head_weight)

    monkeypatch.setattr(FeatureSelector, "fit", spy)
    cfg = _cfg(tmp_path, optim=SeqOptimConfig(epochs=1, batch_scans=4), save_checkpoints=False)
    train_seq(cfg, table=table, labels=y, n_boot=10)
    assert len(seen) == 3
    for k, x in enumerate(seen):
        expected = table.features[table.fold != k]
        assert x.shape == expected.shape
        np.testing.assert_array_equal(np.sort(x, axis=0), np.sort(expected, axis=0))


def test_weight_selector_uses_fold_cnn_head(tmp_path, monkeypatch):
    table, y = synthetic_table(n_scans=8, n_folds=2)
    heads: list[np.ndarray] = []
    original = FeatureSelector.fit

    def spy(self, x, *, head_weight=None):
        heads.append(head_weight)
        return original(self, x, head_weight=head_weight)

    monkeypatch.setattr(FeatureSelector, "fit", spy)
    cfg = _cfg(tmp_path, selector=SelectorConfig("weight_smallest", k=4),
               optim=SeqOptimConfig(epochs=1, batch_scans=4), save_checkpoints=False)
    train_seq(cfg, table=table, labels=y, n_boot=10)
    for k, h in enumerate(heads):
        np.testing.assert_array_equal(h, table.head_weight[k])


def test_checkpoint_reproduces_oof_and_final_model(tmp_path):
    table, y = synthetic_table(n_scans=9, n_folds=3)
    cfg = _cfg(tmp_path, optim=SeqOptimConfig(epochs=2, batch_scans=3), final=True, scan_rule="consecutive")
    res = train_seq(cfg, table=table, labels=y, n_boot=10)
    bundle = load_sequence_checkpoint(tmp_path / "run" / "fold1" / "seed0.pt")
    assert bundle.scan_rule == "consecutive" and bundle.cnn["cnn_fold"] == 1
    scan = "scan001"  # fold 1
    rows = np.flatnonzero(table.scan_id == scan)
    slice_p, scan_p = bundle.predict(table.features[rows], table.probs[rows])
    oof = res.oof.set_index("slice_id").loc[table.slice_id[rows], list(LABELS)].to_numpy()
    np.testing.assert_allclose(slice_p, oof, rtol=1e-4, atol=1e-5)
    scans = res.oof_scans.set_index("scan_id")
    np.testing.assert_allclose(scan_p, scans.loc[scan, list(LABELS)].to_numpy(dtype=float), rtol=1e-4, atol=1e-5)
    final = load_sequence_checkpoint(res.final_checkpoint)
    assert final.selector is not None and final.selector.out_features == 8


def test_probabilities_only_model(tmp_path):
    table, y = synthetic_table(n_scans=6, n_folds=2)
    cfg = _cfg(tmp_path, model=SeqModelConfig(hidden=8, layers=1, use_features=False, probs_input=True,
                                              probs_head=False),
               optim=SeqOptimConfig(epochs=1, batch_scans=3))
    res = train_seq(cfg, table=table, labels=y, n_boot=10)
    bundle = load_sequence_checkpoint(res.checkpoints[0])
    assert bundle.selector is None
    slice_p, _ = bundle.predict(None, table.probs[:7])
    assert slice_p.shape == (7, 6)


def test_errors(tmp_path):
    table, y = synthetic_table(n_scans=6, n_folds=2)
    with pytest.raises(ConfigError, match="not in the embedding table"):
        train_seq(_cfg(tmp_path, folds=[5], save_checkpoints=False), table=table, labels=y)
    single = table.subset(np.arange(len(table)))
    single.fold = np.full(len(table), NO_FOLD)
    with pytest.raises(InputError, match="out-of-fold"):
        train_seq(_cfg(tmp_path, save_checkpoints=False), table=single, labels=y)
    with pytest.raises(ConfigError, match="cnn_checkpoint"):
        train_seq(_cfg(tmp_path, folds=[], final=True, selector=SelectorConfig("weight_largest", k=3),
                       save_checkpoints=False), table=table, labels=y)
    with pytest.raises(ConfigError):
        SeqTrainConfig(optim=SeqOptimConfig(epochs=0))


def test_embedding_table_roundtrip(tmp_path):
    table, _ = synthetic_table(n_scans=4, n_folds=2)
    path = table.save(tmp_path / "emb.npz")
    again = EmbeddingTable.load(path)
    np.testing.assert_array_equal(again.features, table.features)
    assert list(again.slice_id) == list(table.slice_id) and again.meta["model_name"] == "synthetic"
    np.testing.assert_array_equal(again.head_weight[1], table.head_weight[1])
    with pytest.raises(InputError, match="not found"):
        EmbeddingTable.load(tmp_path / "missing.npz")


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted(Path("configs").glob("seq_*.yaml")):
        cfg = load_seq_config(path)
        assert cfg.model.arch in ("lstm", "gru", "conv1d")


def test_early_stopping_on_inner_validation_patients(tmp_path):
    from ichd.training.seq import _scan_data, fit_sequence_model, inner_split

    table, y = synthetic_table(n_scans=12, n_folds=3)
    data = _scan_data(table, table.scan_groups(), table.features[:, :8], y)
    tr, va = inner_split(data, 0.25, seed=0)
    assert len(va) == 3 and not set(tr) & set(va) and len(tr) + len(va) == 12
    assert inner_split(data, 0.25, seed=0)[1].tolist() == va.tolist()  # seeded
    # The held-out patients get the opposite labels: learning the training scans makes their loss rise.
    for j in va:
        data.labels[j] = 1.0 - data.labels[j]
    optim = SeqOptimConfig(epochs=12, lr=1e-2, batch_scans=3, val_fraction=0.25, patience=2)
    _model, info = fit_sequence_model(data, 8, SeqModelConfig(hidden=8, layers=1, dropout=0.0), optim, 0, "cpu")
    assert info["n_val_scans"] == 3 and info["n_train_scans"] == 9
    assert len(info["val_losses"]) == info["epochs_run"]
    assert info["val_losses"][info["best_epoch"] - 1] == min(info["val_losses"])
    assert info["epochs_run"] == info["best_epoch"] + 2 < 12  # stopped after `patience` worse epochs
    with pytest.raises(InputError, match="hold out"):
        inner_split(data.take(range(2)), 0.25, seed=0)


def test_missing_labels_are_masked(tmp_path):
    """Slices with missing labels (NaN) train and evaluate: masked in the loss, skipped in scan labels."""
    torch.set_num_threads(1)
    table, y = synthetic_table(n_scans=16)
    y = y.copy()
    y[[0, 5, 40]] = np.nan
    res = train_seq(_cfg(tmp_path, optim=SeqOptimConfig(epochs=3, lr=3e-3, batch_scans=2, seeds=[0])),
                    table=table, labels=y, n_boot=20)
    assert np.isfinite(res.metrics["weighted_log_loss"]) and np.isfinite(res.metrics["slice_auc_any"])
    scans = pd.read_csv(tmp_path / "run" / "oof_scans.csv")
    assert scans["y_any"].isin([0, 1]).all() and scans["y_any"].sum() == 8
