"""ichd embed: single-model and out-of-fold embedding of a small cache, the .npz table, and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichd.errors import InputError
from ichd.inference.embed import (
    NO_FOLD,
    EmbeddingTable,
    classifier_weight,
    embed_cache,
    embed_slices,
    read_fold_assignment,
    run_checkpoints,
)
from ichd.testing.factories import write_ctich_tree

SIZE = 64  # EfficientNet-Lite0 needs a multiple of 32; small keeps this fast
PATIENTS = {49: 3, 50: 2, 51: 4}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig

    root = write_ctich_tree(tmp_path_factory.mktemp("ctich"), PATIENTS, size=40)
    out = tmp_path_factory.mktemp("cache") / "c"
    build_cache([root], out, PreprocessConfig(image_size=SIZE), workers=0)
    return out


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 'fold' CNNs with different random weights and a folds.csv like `ichd train cnn` writes."""
    import torch

    from ichd.models import create_model
    from ichd.models.checkpoint import save_checkpoint
    from ichd.preprocessing.config import PreprocessConfig

    run = tmp_path_factory.mktemp("run")
    for fold in (0, 1):
        torch.manual_seed(fold)
        model = create_model("efficientnet_lite0", pretrained=False, input_size=SIZE)
        save_checkpoint(run / f"fold{fold}" / "final.pt", model, preprocess=PreprocessConfig(image_size=SIZE),
                        fold=fold)
    (run / "folds.csv").write_text("patient_id,fold\nctich-049,0\nctich-050,1\nctich-051,0\n")
    return run


def test_oof_rows_come_from_the_held_out_fold_model(cache_dir, cnn_run):
    from ichd.models.checkpoint import load_checkpoint
    from ichd.preprocessing.cache import open_cache

    folds = read_fold_assignment(cnn_run / "folds.csv")
    table = embed_cache(cache_dir, run_checkpoints(cnn_run, folds), patient_folds=folds, batch_size=2,
                        device="cpu")
    assert len(table) == sum(PATIENTS.values()) and table.meta["mode"] == "oof"
    assert list(table.scan_id) == sorted(table.scan_id)  # sorted by scan, then slice
    assert table.slice_id[:3].tolist() == ["ctich-049-001", "ctich-049-002", "ctich-049-003"]
    assert sorted(table.head_weight) == [0, 1]
    cache = open_cache(cache_dir)
    for fold in (0, 1):
        model = load_checkpoint(cnn_run / f"fold{fold}" / "final.pt").model
        np.testing.assert_array_equal(table.head_weight[fold], classifier_weight(model))
        for scan in ("ctich-049", "ctich-050", "ctich-051"):
            rows = table.scan_id == scan
            f, p = embed_slices(model, cache.array(scan), batch_size=4)
            if folds[scan] == fold:
                assert (table.fold[rows] == fold).all()
                np.testing.assert_allclose(table.features[rows], f, rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(table.probs[rows], p, rtol=1e-4, atol=1e-6)
            else:  # the other fold's model gives other embeddings: the row really is out-of-fold
                assert not np.allclose(table.features[rows], f, rtol=1e-2, atol=0.0)


def test_single_model_cli_and_roundtrip(cache_dir, cnn_run, tmp_path):
    from ichd.cli.main import run

    out = tmp_path / "emb.npz"
    assert run(["-q", "embed", str(cache_dir), "--checkpoint", str(cnn_run / "fold0" / "final.pt"),
                "--out", str(out), "--device", "cpu"]) == 0
    table = EmbeddingTable.load(out)
    assert (table.fold == NO_FOLD).all() and table.features.shape == (9, 1280) and table.probs.shape == (9, 6)
    assert ((table.probs > 0) & (table.probs < 1)).all()
    assert run(["-q", "embed", str(cache_dir), "--cnn-run", str(cnn_run), "--out", str(out)]) == 2  # exists
    assert run(["-q", "embed", str(cache_dir), "--out", str(tmp_path / "x.npz")]) == 2  # no model given


def test_errors(cache_dir, cnn_run, tmp_path):
    folds = {"ctich-049": 0, "ctich-050": 1}  # patient 051 has no fold
    with pytest.raises(InputError, match="has no fold"):
        embed_cache(cache_dir, run_checkpoints(cnn_run, folds), patient_folds=folds, device="cpu")
    with pytest.raises(InputError, match="no checkpoint for fold 7"):
        run_checkpoints(cnn_run, {"ctich-049": 7})
    bad = tmp_path / "folds.csv"
    bad.write_text("patient_id,fold\nctich-049,0\nctich-049,1\n")
    with pytest.raises(InputError, match="more than one fold"):
        read_fold_assignment(bad)
    with pytest.raises(InputError, match=r"\(z, 3, S, S\)"):
        embed_slices(object(), np.zeros((2, 64, 64)))


def test_scan_subset(cache_dir, cnn_run):
    ckpt = {NO_FOLD: cnn_run / "fold0" / "final.pt"}
    table = embed_cache(cache_dir, ckpt, device="cpu", scan_ids=["ctich-051", "ctich-049"])
    assert sorted(set(table.scan_id)) == ["ctich-049", "ctich-051"] and len(table) == 3 + 4
    full = embed_cache(cache_dir, ckpt, device="cpu")
    rows = np.isin(full.scan_id, ["ctich-049", "ctich-051"])
    np.testing.assert_allclose(table.probs, full.probs[rows], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="not in cache"):
        embed_cache(cache_dir, ckpt, device="cpu", scan_ids=["ctich-049", "nope"])
