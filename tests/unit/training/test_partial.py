"""Partial fine-tuning (ichd.training.partial): map augmentation, the trunk/tail split, the map cache key, and a
tiny cross-validation whose fold checkpoints are ordinary slice-CNN checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ichd.errors import ConfigError
from ichd.training.partial import (
    PartialOptions,
    PartialTrainConfig,
    augment_map,
    build_map_cache,
    split_model,
    tail_module,
    train_partial,
)
from model_factories import make_training_data


def test_augment_map_flips_and_shifts_with_zero_fill() -> None:
    m = np.arange(2 * 4 * 5, dtype=np.float16).reshape(2, 4, 5)
    flipped = augment_map(m, np.random.default_rng(0), hflip_p=1.0, shift=0)
    assert np.array_equal(flipped, m[:, :, ::-1])
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(40):
        out = augment_map(m, rng, hflip_p=0.0, shift=1)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ref = np.zeros_like(m)
                ref[:, max(dy, 0):4 + min(dy, 0), max(dx, 0):5 + min(dx, 0)] = \
                    m[:, max(-dy, 0):4 + min(-dy, 0), max(-dx, 0):5 + min(-dx, 0)]
                if np.array_equal(out, ref):
                    seen.add((dy, dx))
    assert len(seen) == 9  # every shift in [-1, 1]^2 occurs, each exactly a zero-filled translation
    assert np.array_equal(augment_map(m, rng, hflip_p=0.0, shift=0), m)


def test_tail_on_trunk_maps_equals_the_full_model_and_only_the_tail_trains() -> None:
    cfg = PartialTrainConfig(partial=PartialOptions(freeze_blocks=11))
    cfg.model.pretrained = False
    model = split_model(cfg, 64).eval()
    tail = tail_module(model, 11)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.backbone.forward_until(model.normalize(x), 11)
        assert torch.allclose(tail.eval()(maps), model(x), atol=1e-5)
    trainable = {n.split(".")[3] for n, p in model.named_parameters() if p.requires_grad and ".net._blocks." in n}
    assert trainable == {str(i) for i in range(11, 16)}
    assert not model.backbone.net._conv_stem.weight.requires_grad
    tail.train()
    assert not model.backbone.net._blocks[10]._bn1.training and model.backbone.net._blocks[11]._bn1.training


def test_config_errors() -> None:
    from ichd.training.config import ModelConfig

    with pytest.raises(ConfigError, match="efficientnet_lite"):
        PartialTrainConfig(model=ModelConfig(name="resnet18"))
    cfg = PartialTrainConfig(partial=PartialOptions(freeze_blocks=40))
    cfg.model.pretrained = False
    with pytest.raises(ConfigError, match="has 16 blocks"):
        split_model(cfg, 64)


@pytest.fixture()
def tiny(tmp_path: Path) -> PartialTrainConfig:

    patients = {p: 3 for p in range(49, 55)}
    make_training_data(tmp_path, patients)
    from ichd.config import load_config

    raw = {"model": {"name": "efficientnet_lite0", "pretrained": False},
           "data": {"cache": str(tmp_path / "cache"), "labels": str(tmp_path / "labels.csv"), "folds": 3},
           "partial": {"freeze_blocks": 11, "map_cache": str(tmp_path / "maps")},
           "optim": {"lr_per_epoch": [1e-3, 1e-3], "batch_size": 4, "max_steps": 2},
           "device": "cpu", "threads": 1, "val_every": 2, "out": str(tmp_path / "run")}
    (tmp_path / "cfg.yaml").write_text(json.dumps(raw))
    return load_config(PartialTrainConfig, tmp_path / "cfg.yaml")


def test_map_cache_is_reused_and_invalidated(tiny: PartialTrainConfig) -> None:
    from ichd.preprocessing.cache import open_cache

    cache = open_cache(tiny.data.cache)
    model = split_model(tiny, 64)
    first = build_map_cache(tiny, model, cache, torch.device("cpu"))
    assert first.manifest["shape"] == [112, 4, 4] and first.manifest["dtype"] == "float16"
    stamp = (first.root / "manifest.json").stat().st_mtime_ns
    again = build_map_cache(tiny, model, cache, torch.device("cpu"))
    assert again.manifest["digest"] == first.manifest["digest"]
    assert (first.root / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    x = torch.from_numpy(np.array(cache.array(cache.scan_ids[0])))
    with torch.no_grad():
        ref = model.backbone.forward_until(model.normalize(x), 11).numpy()
    assert np.allclose(again.maps(cache.scan_ids[0]), ref, atol=2e-2, rtol=1e-2)
    tiny.partial.freeze_blocks = 8  # another depth: rebuilt
    deeper = build_map_cache(tiny, split_model(tiny, 64), cache, torch.device("cpu"))
    assert deeper.manifest["digest"] != first.manifest["digest"] and deeper.manifest["shape"] == [80, 4, 4]
    tiny.partial.freeze_blocks = 11
    with torch.no_grad():
        model.backbone.net._blocks[3]._bn1.running_mean.add_(1.0)  # other trunk weights: rebuilt
    changed = build_map_cache(tiny, model, cache, torch.device("cpu"))
    assert changed.manifest["digest"] != first.manifest["digest"]


def test_cross_validation_writes_oof_and_ordinary_checkpoints(tiny: PartialTrainConfig) -> None:
    from ichd.models.checkpoint import load_checkpoint

    doc = train_partial(tiny)
    run = Path(tiny.out)
    oof = pd.read_csv(run / "oof.csv")
    assert len(oof) == 18 and set(oof["fold"]) == {0, 1, 2} and np.isfinite(doc["pooled"]["weighted_log_loss"])
    ck = load_checkpoint(run / "fold0" / "final.pt")
    assert ck.model_name == "efficientnet_lite0" and ck.extra["partial"]["freeze_blocks"] == 11
    torch.manual_seed(tiny.seed)  # the random init every fold starts from (seeded like train_partial)
    init = split_model(tiny, 64)
    trained = ck.model.state_dict()
    stem = "backbone.net._conv_stem.weight"
    assert torch.equal(trained[stem], init.state_dict()[stem])  # the frozen trunk is the initial one
    head = "classifier.weight"
    assert not torch.equal(trained[head], init.state_dict()[head])
    metrics = json.loads((run / "fold0" / "metrics.json").read_text())
    assert metrics["finished"] and metrics["trainable_parameters"] < sum(p.numel() for p in init.parameters())
