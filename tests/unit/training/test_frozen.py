"""ichd train frozen: the embedding cache (and its invalidation), head fitting with masked labels, calibration,
a tiny end-to-end run, and the bundle it makes predicting through the ordinary Predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ichd.constants import LABELS
from ichd.models.feature_selection import SelectorConfig
from ichd.models.frozen import ContextHeadConfig, EncoderSpec, FrozenEncoderConfig
from ichd.testing.factories import write_ctich_tree
from ichd.training.calibration import apply_platt, fit_platt, fold_platt_into_linear
from ichd.training.frozen import (
    FrozenTrainConfig,
    HeadOptimConfig,
    ScanRows,
    encoder_embeddings,
    fit_head,
    frozen_features,
    head_logits,
)

SIZE = 64
PATIENTS = {49: 4, 50: 3, 51: 5, 52: 4, 53: 3, 54: 4}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig

    root = write_ctich_tree(tmp_path_factory.mktemp("ctich"), PATIENTS, size=40)
    out = tmp_path_factory.mktemp("cache") / "c"
    build_cache([root], out, PreprocessConfig(image_size=SIZE, normalization="half"), workers=0)
    return out


@pytest.fixture(scope="module")
def labels_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    lines = ["patient,slice,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural,fracture"]
    for p, n in PATIENTS.items():
        bleed = p % 2 == 0
        for s in range(1, n + 1):
            sub = [int(bleed and rng.random() < 0.7) for _ in range(5)]
            lines.append(f"{p},{s},{int(any(sub))},{','.join(map(str, sub))},0")
    path = tmp_path_factory.mktemp("labels") / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_embedding_cache_is_reused_and_invalidated(cache_dir, tmp_path, monkeypatch):
    from ichd.preprocessing.cache import open_cache
    from ichd.training import frozen

    cache = open_cache(cache_dir)
    first = encoder_embeddings(cache, "efficientnet_lite0", SIZE, tmp_path)
    assert first["head_avg"].shape == (len(cache.slices), 1280) and first["last_stage_max"].shape[1] == 320
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(frozen, "progress_bar", lambda **k: calls.append(k), raising=False)
    again = encoder_embeddings(cache, "efficientnet_lite0", SIZE, tmp_path)
    assert np.array_equal(again["head_avg"], first["head_avg"]) and len(sorted(tmp_path.glob("*.npz"))) == 1
    # another size, another encoder, another preprocessing: new files, never the old one
    encoder_embeddings(cache, "efficientnet_lite0", 32 + SIZE, tmp_path)
    encoder_embeddings(cache, "efficientnet_lite1", SIZE, tmp_path)
    assert len(sorted(tmp_path.glob("*.npz"))) == 3
    key = frozen.embedding_key("efficientnet_lite0", SIZE, cache)
    assert frozen.embedding_key("efficientnet_lite0", SIZE, cache, flip=True) != key  # flip-averaged: its own file
    assert frozen._key_name(frozen.embedding_key("efficientnet_lite0", SIZE, cache, flip=True)).count("-flip-") == 1
    cache.config.windows = {**cache.config.windows, "brain": (50.0, 80.0)}  # as if the cache had been rebuilt
    assert frozen.embedding_key("efficientnet_lite0", SIZE, cache) != key


@pytest.mark.parametrize(("channels", "flip"), [("windows", False), ("each_window", False), ("windows", True)])
def test_assembled_features_equal_the_models_forward_features(cache_dir, tmp_path, channels, flip):
    from ichd.models.frozen import FrozenEncoderClassifier
    from ichd.preprocessing.cache import open_cache

    cache = open_cache(cache_dir)
    cfg = FrozenEncoderConfig(encoders=[EncoderSpec("efficientnet_lite0", SIZE, channels, flip)],
                              depth="last_stage", pool="avgmax")
    ids = cache.slices["slice_id"].astype(str).tolist()[:5]
    x = frozen_features(cfg, cache, ids, tmp_path)
    model = FrozenEncoderClassifier(cfg, pretrained=True).eval()
    scan = cache.slices.set_index("slice_id").loc[ids]
    arr = np.stack([cache.array(s)[i] for s, i in zip(scan["scan_id"], scan["slice_index"])])
    with torch.no_grad():
        ref = model.forward_features(torch.from_numpy(arr)).numpy()
    assert np.allclose(x, ref, atol=1e-4)
    assert x.shape[1] == (3 if channels == "each_window" else 1) * 2 * 320
    if flip:  # the mean of the slice's and its mirror image's embeddings: the same for a mirrored slice
        with torch.no_grad():
            mirrored = model.forward_features(torch.from_numpy(arr[..., ::-1].copy())).numpy()
        assert np.allclose(mirrored, ref, atol=1e-4)
        assert "flip-averaged" in cfg.describe()


def _toy(n_scans: int = 8, per: int = 6, d: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_scans * per, d)).astype(np.float32)
    logit = 2.0 * x[:, 0]
    y = (rng.random((len(x), 6)) < 1 / (1 + np.exp(-logit[:, None]))).astype(np.float32)
    scans = ScanRows.from_table(np.repeat(np.arange(n_scans), per).astype(str), np.tile(np.arange(per), n_scans))
    return x, y, scans


def test_head_learns_and_masked_labels_do_not_count():
    x, y, scans = _toy(n_scans=40)
    opt = HeadOptimConfig(l2=1e-3, balance=False)
    sel_cfg = SelectorConfig("none", standardize=True)
    sel, head = fit_head(x, y, scans, ContextHeadConfig(context=0), sel_cfg, opt)
    logits, rows = head_logits(sel, head, x, scans)
    assert np.corrcoef(logits[:, 0], x[rows, 0])[0, 1] > 0.9
    # NaN cells are masked: the fit is finite, and differs from reading them as 0 or as 1
    y_nan = y.copy()
    y_nan[:60, 2] = np.nan
    _, h_nan = fit_head(x, y_nan, scans, ContextHeadConfig(context=0), sel_cfg, opt)
    assert torch.isfinite(h_nan.net.weight).all()
    for value in (0.0, 1.0):
        y_val = y_nan.copy()
        y_val[:60, 2] = value
        _, h_val = fit_head(x, y_val, scans, ContextHeadConfig(context=0), sel_cfg, opt)
        assert not torch.allclose(h_val.net.weight[2], h_nan.net.weight[2], atol=1e-3)
        assert torch.allclose(h_val.net.weight[0], h_nan.net.weight[0], atol=1e-3)  # other labels unaffected


def test_scan_mean_head_stores_the_training_scans_mean_as_its_prior():
    x, y, scans = _toy(n_scans=12)
    sel_cfg = SelectorConfig("none", standardize=True)
    sel, head = fit_head(x, y, scans, ContextHeadConfig(context=1, scan_mean=True), sel_cfg,
                         HeadOptimConfig(l2=1e-2, balance=False))
    xs = sel.transform(x)
    expected = np.mean([xs[g].mean(axis=0) for g in scans.groups], axis=0)
    np.testing.assert_allclose(head.scan_prior.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert head.net.in_features == 3 * x.shape[1]


def test_loss_masks_missing_labels_like_the_metric():
    from ichd.evaluation.metrics import weighted_log_loss
    from ichd.training.frozen import _loss

    rng = np.random.default_rng(0)
    z = rng.normal(size=(20, 6))
    y = (rng.random((20, 6)) < 0.4).astype(float)
    y[:5, 1] = np.nan
    y[:, 3] = np.nan  # a label with no known row drops out
    got = _loss(torch.tensor(z, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), torch.ones(6),
                torch.tensor([2.0, 1, 1, 1, 1, 1]))
    assert float(got) == pytest.approx(weighted_log_loss(y, 1 / (1 + np.exp(-z))), rel=1e-4)


def test_platt_recovers_scale_and_bias_and_folds_into_a_linear_layer():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4000, 2)) * 2
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-(0.5 * z + np.array([1.0, -1.0]))))).astype(float)
    y[:100, 0] = np.nan
    cal = fit_platt(z, y)
    assert np.allclose(cal.a, 0.5, atol=0.08) and np.allclose(cal.b, [1.0, -1.0], atol=0.15)
    layer = torch.nn.Linear(3, 2)
    feats = torch.randn(7, 3)
    with torch.no_grad():
        before = layer(feats).numpy()
    fold_platt_into_linear(layer, cal)
    with torch.no_grad():
        after = torch.sigmoid(layer(feats)).numpy()
    assert np.allclose(after, apply_platt(before, cal), atol=1e-5)


def test_tiny_run_writes_oof_and_a_bundle_the_predictor_runs(cache_dir, labels_csv, tmp_path):
    from ichd.inference.predictor import Predictor
    from ichd.models.bundled import write_bundle
    from ichd.training.frozen import train_frozen
    from ichd.types import CTSeries

    cfg = FrozenTrainConfig(out=str(tmp_path / "run"), embeddings_dir=str(tmp_path / "emb"), inner_folds=2,
                            encoder=FrozenEncoderConfig(encoders=[EncoderSpec("efficientnet_lite0", SIZE)]),
                            head=ContextHeadConfig(kind="mlp", context=1, hidden=8), max_steps=5,
                            save_fold_models=True)
    cfg.data.cache, cfg.data.labels, cfg.data.sources = str(cache_dir), str(labels_csv), None
    cfg.data.folds, cfg.data.fold_seeds = 2, [0, 1]
    m = train_frozen(cfg)
    assert len(m["repeats"]) == 2 and len(m["repeats"][0]["per_fold"]) == 2
    import pandas as pd

    for r in (0, 1):
        oof = pd.read_csv(tmp_path / "run" / f"r{r}" / "oof.csv")
        assert len(oof) == sum(PATIENTS.values()) and oof[list(LABELS)].notna().all().all()
        assert set(oof["fold"]) == {0, 1}
    assert (tmp_path / "run" / "r0" / "fold1" / "sequence.pt").is_file()
    from ichd.errors import InputError

    with pytest.raises(InputError, match="already holds a finished run"):
        train_frozen(cfg)  # never overwrites a finished run silently
    final = tmp_path / "run" / "final"
    bundle = write_bundle(tmp_path / "bundle", name="toy-frozen", version="0.0.1", model_card="toy",
                          files={"cnn": final / "cnn.pt", "sequence": final / "sequence.pt"},
                          thresholds=dict.fromkeys(LABELS, 0.5))
    pred = Predictor.load(bundle.root)
    hu = np.random.default_rng(0).normal(30, 20, size=(4, 40, 40)).astype(np.float32)
    series = CTSeries(hu=hu, spacing_mm=(5.0, 0.5, 0.5), positions_mm=np.arange(4) * 5.0,
                      sop_instance_uids=[f"1.2.{i}" for i in range(4)], study_instance_uid="1.2",
                      series_instance_uid="1.2.3")
    out = pred.predict_series(series)
    assert out.slice_probs.shape == (4, 6) and np.all((out.slice_probs > 0) & (out.slice_probs < 1))
    # the slice model alone (encoder + calibrated slice head) is the bundle's CNN
    assert pred.cnn.default_cfg["name"] == "frozen_encoder" and pred.sequence is not None


def test_source_weights_weigh_rows_and_unknown_sources_are_errors():
    from ichd.errors import ConfigError
    from ichd.training.frozen import source_row_weights

    src = np.asarray(["ct-ich"] * 3 + ["rsna-series"] * 2)
    assert source_row_weights(src, None) is None
    assert source_row_weights(src, {"rsna-series": 2.0}).tolist() == [1, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="did you mean"):
        source_row_weights(src, {"rsna_series": 2.0})
    x, y, scans = _toy(n_scans=20)
    opt = HeadOptimConfig(l2=1e-3, balance=False)
    sel_cfg = SelectorConfig("none", standardize=True)
    w = np.ones(len(x), np.float32)
    _, plain = fit_head(x, y, scans, ContextHeadConfig(context=0), sel_cfg, opt)
    _, same = fit_head(x, y, scans, ContextHeadConfig(context=0), sel_cfg, opt, row_weight=w)
    w[:30] = 5.0
    _, heavy = fit_head(x, y, scans, ContextHeadConfig(context=0), sel_cfg, opt, row_weight=w)
    assert torch.allclose(plain.net.weight, same.net.weight, atol=1e-5)
    assert not torch.allclose(plain.net.weight, heavy.net.weight, atol=1e-3)


def test_augment_caches_join_training_only_and_report_their_own_oof(cache_dir, labels_csv, tmp_path):
    import pandas as pd

    from ichd.errors import ConfigError
    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.training.frozen import train_frozen

    root = write_ctich_tree(tmp_path / "ctich", PATIENTS, size=40)
    win = tmp_path / "win"
    build_cache([root], win, PreprocessConfig(image_size=SIZE, normalization="half", simulate_window=(40, 80)),
                workers=0)
    cfg = FrozenTrainConfig(out=str(tmp_path / "run"), embeddings_dir=str(tmp_path / "emb"), inner_folds=2,
                            encoder=FrozenEncoderConfig(encoders=[EncoderSpec("efficientnet_lite0", SIZE)]),
                            head=ContextHeadConfig(kind="linear", context=1), max_steps=5, final=True)
    cfg.data.cache, cfg.data.labels, cfg.data.sources = str(cache_dir), str(labels_csv), None
    cfg.data.folds, cfg.data.fold_seeds, cfg.data.augment_caches = 2, [0], [str(win)]
    m = train_frozen(cfg)
    aug = m["repeats"][0]["augment"][str(win)]["pooled"]
    assert aug["n"] == sum(PATIENTS.values()) and aug["auc/any"] is not None
    oof = pd.read_csv(tmp_path / "run" / "oof.csv")
    assert len(oof) == sum(PATIENTS.values())  # held-out predictions are on the main cache only
    assert (tmp_path / "run" / "final" / "sequence.pt").is_file()
    small = tmp_path / "small"
    build_cache([root], small, PreprocessConfig(image_size=32, normalization="half"), workers=0)
    cfg.data.augment_caches, cfg.out = [str(small)], str(tmp_path / "run2")
    with pytest.raises(ConfigError, match="does not match"):
        train_frozen(cfg)
