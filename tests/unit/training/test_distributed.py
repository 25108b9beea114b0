"""Slice-CNN training under torchrun (DDP): rank-sharded samplers, sharded validation, and a 2-process gloo run
on the CPU that follows the 1-process loss trajectory, resumes a 1-process checkpoint and writes a checkpoint
that loads in one process.

The 1-vs-2-process comparison uses a BatchNorm-free toy CNN (registered for the test only): torch's
SyncBatchNorm needs a GPU, and with plain BatchNorm each rank would normalise its half-batch with its own
statistics, so the two runs would legitimately differ. Dropout is 0 and augmentation is off; the same global
batch (``optim.batch_size``, split over the processes) makes the runs equal up to float rounding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from ichd.constants import LABELS
from ichd.errors import ConfigError, InputError
from ichd.testing.server import free_port
from ichd.training.distributed import (
    DistInfo,
    EvalShardSampler,
    ShardSampler,
    env_info,
    interleave,
    per_rank_batch,
    rank_seed,
    run_on_main,
)
from model_factories import make_training_data

#: Relative tolerance of the 1- vs 2-process comparison (float32 sums in another order: ~1e-7 in practice).
RTOL = 1e-4

#: A BatchNorm-free slice CNN, registered in the test process and in the torchrun workers (via LAUNCHER).
TOY_MODEL = '''
from torch import nn

from ichd.errors import ModelError
from ichd.models import model_spec, register_model
from ichd.models.backbones import SliceClassifier


def _ddp_toy(*, pretrained, num_classes, weights, input_size, dropout, norm):
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    return SliceClassifier("ddp_toy", backbone, num_features=16, num_classes=num_classes, input_size=input_size,
                           norm=norm, gradcam_layer="backbone.3", dropout=dropout, pretrained=None)


try:
    model_spec("ddp_toy")
except ModelError:
    register_model("ddp_toy", family="slice", description="BatchNorm-free toy CNN (tests)", source="tests",
                   defaults={"input_size": 64, "dropout": 0.0, "norm": "seed"})(_ddp_toy)
'''

#: What each torchrun worker runs: register the toy model, then ``python -m ichd`` (ichd/__main__.py).
LAUNCHER = TOY_MODEL + '''
import runpy
import sys

sys.argv[0] = "ichd"
runpy.run_module("ichd", run_name="__main__", alter_sys=True)
'''


# -- samplers and small helpers -----------------------------------------------------------------------------------

def _draws(sampler, gen: torch.Generator, seed: int) -> list[int]:
    gen.manual_seed(seed)
    return [int(i) for i in sampler]


@pytest.mark.parametrize("world", [2, 3])
def test_shard_sampler_splits_the_weighted_draws(world: int) -> None:
    gen = torch.Generator()
    weights = torch.linspace(0.1, 1.0, 20, dtype=torch.double)
    base = WeightedRandomSampler(weights, 31, replacement=True, generator=gen)
    full = _draws(base, gen, 5)
    shards = [_draws(ShardSampler(base, r, world), gen, 5) for r in range(world)]
    n = 31 // world * world
    assert [len(s) for s in shards] == [len(ShardSampler(base, r, world)) for r in range(world)] == [n // world] * world
    # Disjoint positions that together are the epoch's draws (cut to a multiple of the world size).
    assert interleave(shards) == full[:n]
    # A resumed epoch (generator re-seeded the same way) gives every rank the same shard again; another epoch not.
    assert [_draws(ShardSampler(base, r, world), gen, 5) for r in range(world)] == shards
    assert _draws(ShardSampler(base, 0, world), gen, 6) != shards[0]


def test_shard_sampler_shuffle_and_global_batches() -> None:
    """Shuffle path: the shards partition one permutation; with per-rank batch B/N the ranks' k-th batches are
    the single-process k-th batch of B."""
    gen = torch.Generator()
    data = list(range(23))
    base = RandomSampler(data, generator=gen)
    world, batch = 2, 6
    gen.manual_seed(9)
    single = [b.tolist() for b in DataLoader(data, batch_size=batch, sampler=base, drop_last=True)]
    per_rank = []
    for r in range(world):
        gen.manual_seed(9)
        loader = DataLoader(data, batch_size=per_rank_batch(batch, world), sampler=ShardSampler(base, r, world),
                            drop_last=True)
        per_rank.append([b.tolist() for b in loader])
    assert len(single) == len(per_rank[0]) == len(per_rank[1]) == 23 // batch
    for k, b in enumerate(single):
        assert sorted(per_rank[0][k] + per_rank[1][k]) == sorted(b)
        assert not set(per_rank[0][k]) & set(per_rank[1][k])
    seen = [i for r in per_rank for b in r for i in b]
    assert len(seen) == len(set(seen))  # a permutation: no slice twice in an epoch


def test_eval_shards_interleave_back() -> None:
    for n, world in [(7, 3), (8, 2), (1, 2), (0, 2)]:
        parts = [list(EvalShardSampler(n, r, world)) for r in range(world)]
        assert interleave(parts) == list(range(n))
        arrays = [np.asarray(p, dtype=np.float32).reshape(-1, 1) * np.ones((1, 6), np.float32) if p
                  else np.zeros((0, 0), np.float32) for p in parts]  # an empty shard: placeholder shape
        if n:
            out = interleave(arrays)
            assert out.shape == (n, 6) and (out[:, 0] == np.arange(n)).all()
    with pytest.raises(ValueError):
        interleave([[0, 2], [1, 3, 5]])


def test_batch_split_seeds_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert per_rank_batch(32, 1) == 32 and per_rank_batch(32, 4) == 8
    with pytest.raises(ConfigError, match="global batch"):
        per_rank_batch(30, 4)
    assert rank_seed(42042, 0) == 42042  # a single process is unchanged
    assert len({rank_seed(42042, r) for r in range(4)}) == 4 and rank_seed(42042, 1) == rank_seed(42042, 1)
    assert env_info({}) is None
    assert env_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistInfo(3, 4, 1)
    with pytest.raises(InputError):
        env_info({"RANK": "4", "WORLD_SIZE": "4"})
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert run_on_main(lambda: 7) == 7  # no process group: just the call


# -- 1 process vs torchrun with 2 gloo processes -------------------------------------------------------------------

@pytest.fixture()
def toy_model():
    from ichd.models import registry

    registry._ensure_loaded()
    exec(compile(TOY_MODEL, "<ddp_toy>", "exec"), {})  # noqa: S102 - the workers run the same source
    yield "ddp_toy"
    registry._REGISTRY.pop("ddp_toy", None)  # keep the model list of other tests unchanged


@pytest.fixture()
def tiny_setup(tmp_path: Path) -> Path:
    """A 64 px cache of 4 synthetic CT-ICH patients, an ichd labels CSV and a 5-epoch config (1 step each)."""

    patients = {49: 6, 50: 5, 51: 6, 52: 5}
    make_training_data(tmp_path, patients)
    cfg = {"model": {"name": "ddp_toy", "pretrained": False, "dropout": 0.0},
           "data": {"cache": str(tmp_path / "cache"), "labels": str(tmp_path / "labels.csv"), "folds": 2,
                    "num_workers": 0, "epoch_samples": 8},  # the weighted sampler, one global batch per epoch
           "augment_enabled": False,
           "optim": {"lr_per_epoch": [3e-3] * 5, "batch_size": 8},  # global batch: 4 per process with 2
           "seed": 3, "device": "cpu", "threads": 1, "val_batch_size": 4, "out": str(tmp_path / "unused")}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def _torchrun(root: Path, out: Path, nproc: int = 2) -> float:
    """``torchrun --nproc-per-node 2 <launcher> train cnn --config cfg.yaml --fold 0 --out OUT``; seconds."""
    launcher = root / "ichd_launcher.py"
    launcher.write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(launcher),
           "-q", "train", "cnn", "--config", str(root / "cfg.yaml"), "--fold", "0", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return time.perf_counter() - t0


def _history(out: Path, key: str) -> np.ndarray:
    doc = json.loads((out / "fold0" / "metrics.json").read_text())
    assert doc["finished"]
    return np.array([h[key] for h in doc["history"]], dtype=np.float64)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_torchrun_two_processes_match_one(toy_model: str, tiny_setup: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from ichd.models.checkpoint import load_checkpoint
    from ichd.training.cnn import train_cnn
    from ichd.training.config import load_cnn_config
    from ichd.training.trainer import Trainer

    root = tiny_setup
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    threads = torch.get_num_threads()
    cfg = load_cnn_config(root / "cfg.yaml")

    # 1 process, in this process; keep a copy of the fold folder as it is before epoch 3 (last.pt = epoch 2).
    single, resumed = root / "single", root / "resumed"
    train_epoch = Trainer.train_epoch

    def snapshot_then_train(self, loader, epoch):
        if epoch == 2:
            shutil.copytree(single / "fold0", resumed / "fold0", ignore=shutil.ignore_patterns(".lock"))
        return train_epoch(self, loader, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", snapshot_then_train)
    try:
        res = train_cnn(cfg, 0, out=single)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    assert res.resumed_from_epoch == 0 and json.loads((resumed / "fold0" / "metrics.json").read_text())[
        "history"][-1]["epoch"] == 2

    # 2 processes from scratch, and 2 processes resuming the 1-process run after epoch 2.
    ddp = root / "ddp"
    _torchrun(root, ddp)
    _torchrun(root, resumed)

    # Same loss trajectory (one optimizer step per epoch: per-step losses), same validation, same weights.
    loss_1, loss_2 = _history(single, "train/loss"), _history(ddp, "train/loss")
    assert len(loss_1) == 5 and np.ptp(loss_1) > 1e-3  # the loss moves, so the comparison means something
    np.testing.assert_allclose(loss_2, loss_1, rtol=RTOL)
    doc = json.loads((ddp / "fold0" / "metrics.json").read_text())
    assert (doc["world_size"], doc["batch_per_process"]) == (2, 4)  # really two processes, 4 slices each
    np.testing.assert_allclose(_history(ddp, "train/n"), 8)  # the global batch, summed over the ranks
    np.testing.assert_allclose(_history(ddp, "val/weighted_log_loss"), _history(single, "val/weighted_log_loss"),
                               rtol=RTOL)
    np.testing.assert_allclose(_history(resumed, "train/loss"), loss_1, rtol=RTOL)
    w1 = _weights(single / "fold0" / "final.pt")
    for run in (ddp, resumed):
        w2 = _weights(run / "fold0" / "final.pt")
        assert w2.keys() == w1.keys()  # the unwrapped module: no "module." prefix
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=RTOL, atol=1e-6)

    # Rank 0 wrote every output once: the same folds, an OOF row for every validation slice, no lock left.
    assert (ddp / "folds.csv").read_text() == (single / "folds.csv").read_text()
    oof_1 = pd.read_csv(single / "fold0" / "oof.csv")
    oof_2 = pd.read_csv(ddp / "fold0" / "oof.csv")
    folds = pd.read_csv(single / "folds.csv")
    labels = pd.read_csv(root / "labels.csv")
    val = labels[labels["patient_id"].isin(folds.loc[folds["fold"] == 0, "patient_id"])]
    assert oof_2["slice_id"].is_unique and sorted(oof_2["slice_id"]) == sorted(val["slice_id"])
    assert list(oof_2["slice_id"]) == list(oof_1["slice_id"])
    np.testing.assert_allclose(oof_2[list(LABELS)], oof_1[list(LABELS)], rtol=1e-3, atol=1e-5)
    assert sorted(p.name for p in (ddp / "fold0").iterdir()) == ["config.yaml", "final.pt", "last.pt",
                                                                  "metrics.json", "oof.csv"]

    # The DDP checkpoint loads in a single process and reproduces its out-of-fold predictions.
    from ichd.data.datasets import SliceDataset

    ckpt = load_checkpoint(ddp / "fold0" / "final.pt")
    ds = SliceDataset(str(root / "cache"), list(oof_2["slice_id"][:4]))
    with torch.no_grad():
        p = torch.sigmoid(ckpt.model(torch.stack([ds[i]["image"] for i in range(4)]))).numpy()
    np.testing.assert_allclose(p, oof_2[list(LABELS)].to_numpy()[:4], atol=1e-4)


def test_python_m_ichd_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "ichd", "--version"], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("ichd ")
