"""Slice-CNN training on real CT-ICH slices: a few steps lower the loss; cross-validation folds never share a
patient; out-of-fold predictions, checkpoints, merge and resume work end to end (tiny 64 px cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ichd.constants import LABELS

PATIENTS = [49, 50, 53, 58, 60, 62]  # 4 with hemorrhage, 2 without


@pytest.fixture(scope="module")
def tiny_cache(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig

    if not (data_root / "ct-ich").is_dir():
        pytest.skip("ct-ich not in the data folder")
    out = tmp_path_factory.mktemp("cache") / "ctich-64"
    summary = build_cache([data_root / "ct-ich"], out, PreprocessConfig(image_size=64), workers=1,
                          patients=PATIENTS)
    assert not summary.failed
    return out


@pytest.fixture()
def cfg(tiny_cache: Path, data_root: Path, tmp_path: Path):
    from ichd.training.config import CnnTrainConfig, DataConfig, OptimConfig

    torch.set_num_threads(1)
    return CnnTrainConfig(data=DataConfig(cache=str(tiny_cache), labels=str(data_root / "ct-ich" / "labels.csv"),
                                          folds=2, num_workers=0),
                          optim=OptimConfig(lr_per_epoch=[1e-4], batch_size=16), threads=1, out=str(tmp_path / "run"))


def test_two_steps_on_real_slices_lower_the_loss(cfg) -> None:
    from torch.utils.data import DataLoader

    from ichd.data.datasets import SliceDataset
    from ichd.models import create_model
    from ichd.training.cnn import load_training_table
    from ichd.training.losses import WeightedBCEWithLogits
    from ichd.training.trainer import Trainer

    cache, labels = load_training_table(cfg)
    pick = pd.concat([labels[labels["any"] == 1].head(8), labels[labels["any"] == 0].head(8)])
    ds = SliceDataset(cache, list(pick.index), labels=pick)
    batch = next(iter(DataLoader(ds, batch_size=16)))
    model = create_model("efficientnet_lite0", pretrained=True, input_size=64, dropout=0.0)
    loss_fn = WeightedBCEWithLogits()

    def loss_now() -> float:
        model.train()
        torch.manual_seed(0)  # same drop-connect masks before and after
        with torch.no_grad():
            return float(loss_fn(model(batch["image"]), batch["target"]))

    before = loss_now()
    trainer = Trainer(model, loss_fn, torch.optim.Adam(model.parameters(), lr=1e-3), lr_per_epoch=[1e-3],
                      device=torch.device("cpu"), channels_last=True)
    trainer.train_epoch([batch, batch], 0)
    assert trainer.step == 2
    after = loss_now()
    assert after < before - 0.01, (before, after)


def test_cross_validation_end_to_end(cfg, tmp_path: Path) -> None:
    from ichd.models.checkpoint import load_checkpoint
    from ichd.training.cnn import load_training_table, merge_folds, train_cnn

    out = Path(cfg.out)
    results = [train_cnn(cfg, k) for k in (0, 1)]
    folds = pd.read_csv(out / "folds.csv")
    assert sorted(folds["patient_id"]) == [f"ctich-{p:03d}" for p in PATIENTS]  # each patient exactly once
    _, labels = load_training_table(cfg)
    oof_patients = []
    for k, res in enumerate(results):
        oof = pd.read_csv(res.oof_csv)
        val = set(folds.loc[folds["fold"] == k, "patient_id"])
        assert set(oof["patient_id"]) == val and (oof["fold"] == k).all()
        assert len(oof) == int(labels["patient_id"].isin(val).sum())
        assert list(oof.columns) == ["slice_id", "scan_id", "patient_id", "slice_index", "fold", *LABELS]
        ckpt = load_checkpoint(res.final_checkpoint)
        assert set(ckpt.extra["val_patients"]) == val
        metrics = json.loads((res.out_dir / "metrics.json").read_text())
        train_patients = set(labels["patient_id"]) - val
        assert metrics["train_slices"] == int(labels["patient_id"].isin(train_patients).sum())
        assert not train_patients & val  # no patient on both sides
        # The saved model reproduces its out-of-fold predictions.
        from ichd.data.datasets import SliceDataset

        ds = SliceDataset(cfg.data.cache, list(oof["slice_id"][:4]))
        x = torch.stack([ds[i]["image"] for i in range(4)])
        with torch.no_grad():
            p = torch.sigmoid(ckpt.model(x)).numpy()
        assert np.allclose(p, oof[list(LABELS)].to_numpy()[:4], atol=1e-4)
        assert ckpt.config["optim"]["lr_per_epoch"] == [1e-4] and ckpt.preprocess["image_size"] == 64
        oof_patients += sorted(val)
    assert sorted(oof_patients) == sorted(folds["patient_id"])

    doc = merge_folds(out)
    merged = pd.read_csv(out / "oof.csv")
    assert len(merged) == len(labels) and merged["slice_id"].is_unique
    assert doc["n_scans"] == len(PATIENTS) and 0 < doc["pooled"]["weighted_log_loss"] < 2

    # Resume: a finished fold is not trained again and gives the same predictions.
    first_wall = json.loads((results[0].out_dir / "metrics.json").read_text())["wall_seconds"]
    again = train_cnn(cfg, 0)
    assert again.resumed_from_epoch == 1
    assert json.loads((again.out_dir / "metrics.json").read_text())["wall_seconds"] >= first_wall  # cumulative
    assert pd.read_csv(again.oof_csv).equals(pd.read_csv(results[0].oof_csv))


def test_resume_refuses_another_config(cfg) -> None:
    from ichd.errors import ConfigError
    from ichd.training.cnn import train_cnn

    cfg.optim.lr_per_epoch = [1e-4]
    train_cnn(cfg, 1)
    cfg.optim.batch_size = 8
    with pytest.raises(ConfigError, match="different configuration"):
        train_cnn(cfg, 1)


def test_augmented_loader_is_reproducible(cfg) -> None:
    from ichd.data.datasets import SliceDataset
    from ichd.training.cnn import load_training_table, make_loaders

    cfg.data.num_workers = 1
    cache, labels = load_training_table(cfg)
    loader, _, generator, _ = make_loaders(cfg, cache, labels, None, seed=3)

    def first_batch(seed: int) -> dict:
        generator.manual_seed(seed)  # what the trainer does at the start of every epoch
        return next(iter(loader))

    a, b, c = first_batch(5), first_batch(5), first_batch(6)
    assert a["slice_id"] == b["slice_id"] and torch.equal(a["image"], b["image"])
    assert a["slice_id"] != c["slice_id"]
    plain = SliceDataset(cache, a["slice_id"])
    raw = torch.stack([plain[i]["image"] for i in range(len(plain))])
    assert raw.shape == a["image"].shape and not torch.equal(raw, a["image"])  # augmentation is on


def test_rsna_stage2_format_trains(data_root: Path, tmp_path: Path) -> None:
    """The same training path on RSNA-format labels (``ID_<SOPInstanceUID>_<subtype>,Label`` rows), with scans
    and patients taken from the DICOM headers via the cache."""
    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.training.cnn import load_training_table, train_cnn
    from ichd.training.config import CnnTrainConfig, DataConfig, ModelConfig, OptimConfig

    samples = data_root / "rsna-samples"
    if not samples.is_dir():
        pytest.skip("rsna-samples not in the data folder")
    torch.set_num_threads(1)
    build_cache([samples], tmp_path / "cache", PreprocessConfig(image_size=64), workers=1)
    wide = pd.read_csv(samples / "labels.csv")
    rows = [(f"{sop}_{lab}", int(v)) for sop, (_, r) in zip(wide["sop_instance_uid"], wide.iterrows())
            for lab, v in r[list(LABELS)].items()]
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(tmp_path / "stage_2_train.csv", index=False)
    cfg = CnnTrainConfig(model=ModelConfig(name="resnet18", pretrained=False),
                         data=DataConfig(cache=str(tmp_path / "cache"), labels=str(tmp_path / "stage_2_train.csv"),
                                         folds=2, num_workers=0),
                         optim=OptimConfig(lr_per_epoch=[1e-4], batch_size=4), threads=1,
                         out=str(tmp_path / "run"))
    _, labels = load_training_table(cfg)
    assert len(labels) == len(wide) and labels["patient_id"].notna().all()
    res = train_cnn(cfg, 0)
    oof = pd.read_csv(res.oof_csv)
    assert set(oof["slice_id"]) <= set(wide["sop_instance_uid"]) and len(oof) > 0
    assert np.isfinite(oof[list(LABELS)].to_numpy()).all()


def test_balanced_sampling_draws_more_positives(cfg) -> None:
    from torch.utils.data import WeightedRandomSampler

    from ichd.training.cnn import load_training_table, make_loaders

    cfg.data.balanced_sampling = True
    cfg.augment_enabled = False
    cache, labels = load_training_table(cfg)
    loader, _, generator, _ = make_loaders(cfg, cache, labels, None, seed=0)
    assert isinstance(loader.sampler, WeightedRandomSampler) and loader.sampler.generator is generator
    generator.manual_seed(1)
    drawn = [float(t[0]) for b in loader for t in b["target"]]
    base = float(labels["any"].mean())
    assert base < 0.35 and np.mean(drawn) > base + 0.1  # ~0.5 of the draws vs the base rate


def test_same_seed_same_model(cfg, tmp_path: Path) -> None:
    """Deterministic training: two runs of one config (augmentation in a worker process) give the same model."""
    from ichd.training.cnn import train_cnn

    cfg.data.num_workers = 1
    cfg.model.name, cfg.model.pretrained = "resnet18", False  # small and fast
    a = train_cnn(cfg, 0, out=tmp_path / "a")
    b = train_cnn(cfg, 0, out=tmp_path / "b")
    assert pd.read_csv(a.oof_csv).equals(pd.read_csv(b.oof_csv))


def test_fold_lock(tmp_path: Path) -> None:
    import os

    from ichd.errors import InputError
    from ichd.training.cnn import fold_lock

    with fold_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(InputError, match="being trained by process"), fold_lock(tmp_path):
            pass
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text("999999999")  # a dead process's lock is taken over
    with fold_lock(tmp_path):
        pass
