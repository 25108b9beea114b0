"""Partial fine-tuning of EfficientNet-Lite (issue 20 item 3): the stem and the first ``freeze_blocks`` MBConv
blocks keep their ImageNet weights (batch norm in eval mode), their output maps are computed once per slice and
cached on disk as float16, and the remaining blocks, the head conv and the classifier are trained on the cached
maps for many epochs with the one :class:`~ichd.training.trainer.Trainer`.

Augmentation acts on the cached maps: a horizontal flip and an integer shift (zero-filled) of the map. Both
approximate the same transform of the image: the frozen convolutions are not exactly flip-equivariant (their
kernels are not symmetric), and a shift of one map pixel is a shift of ``stride`` image pixels (16 for Lite0's
maps after block 8..10) whose border differs from the image shifted and then encoded. The image-space
augmentation of the slice CNN (HU transforms, JPEG round trip, rotation, scale) cannot act on cached maps.

Map cache (``partial.map_cache``, one folder per encoder, freeze depth and image cache)::

    MAPS/manifest.json    {"format", "key": {model, pretrained, freeze_blocks, trunk digest, image cache
                           preprocessing + its arrays' sha256}, "digest" (sha256 of the key), "shape", "dtype",
                           "scans": {scan_id: file}}
    MAPS/maps/<file>.npy  float16 (z, C, h, w): the trunk's map of every slice of the scan

A cache whose key differs (another encoder or weights, freeze depth, image size or preprocessing, or changed
arrays in the image cache) is rebuilt, never reused (:func:`build_map_cache`).

The result of every fold is an ordinary slice CNN (``efficientnet_liteN``) checkpoint: the frozen trunk plus the
trained tail, so ``ichd predict``, ``evaluate``, ``explain`` and bundling use it unchanged. The run folder has
the layout of ``ichd train cnn`` (``folds.csv``, ``fold{K}/{config.yaml, final.pt, metrics.json, oof.csv}``)
and is merged with :func:`ichd.training.cnn.merge_folds` into ``oof.csv`` and ``cv_metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichd.errors import ConfigError, InputError
from ichd.training.config import CnnTrainConfig, DataConfig, ModelConfig, OptimConfig
from ichd.utils.logging import get_logger

log = get_logger(__name__)

MAP_CACHE_FORMAT = "ichd-map-cache/1"


@dataclass
class PartialOptions:
    """What is frozen and cached, and the map augmentation."""

    freeze_blocks: int = 11  # stem + blocks 0..10 frozen (Lite0: 112 x S/16 x S/16 maps); the rest is trained
    map_cache: str = "cache/maps-partial"  # folder of the map cache (rebuilt when its key changes)
    hflip_p: float = 0.5  # horizontal flip of the map
    shift: int = 1  # random shift of up to this many map pixels in x and y (zero-filled); 0: none
    extract_batch: int = 32  # slices per trunk forward pass when the cache is built


@dataclass
class PartialTrainConfig:
    """Everything that defines a partial fine-tuning run (``ichd train partial --config FILE``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    partial: PartialOptions = field(default_factory=PartialOptions)
    seed: int = 42
    device: str = "auto"
    threads: int | None = None
    val_batch_size: int = 128
    val_every: int = 5
    out: str = "runs/partial_ft_lite0"

    def __post_init__(self) -> None:
        if not self.model.name.startswith("efficientnet_lite"):
            raise ConfigError(f"partial fine-tuning supports the efficientnet_lite models, not {self.model.name!r}",
                              hint="model.name: efficientnet_lite0 (or lite1, lite2)")
        if self.partial.freeze_blocks < 0:
            raise ConfigError(f"partial.freeze_blocks must be >= 0, got {self.partial.freeze_blocks}")
        if not 0.0 <= self.partial.hflip_p <= 1.0 or self.partial.shift < 0:
            raise ConfigError("partial.hflip_p must be in [0, 1] and partial.shift >= 0")
        if self.model.freeze:
            raise ConfigError("model.freeze is not used by partial fine-tuning",
                              hint="partial.freeze_blocks sets what is frozen")
        self.cnn_config()  # the shared checks of CnnTrainConfig (learning rates, folds, labels, ...)

    def cnn_config(self) -> CnnTrainConfig:
        """The slice-CNN config of the same model, data and schedule (for the cache/label/fold helpers and
        :func:`ichd.training.cnn.merge_folds`)."""
        return CnnTrainConfig(model=self.model, data=self.data, optim=self.optim, seed=self.seed,
                              device=self.device, threads=self.threads, val_batch_size=self.val_batch_size,
                              out=self.out, augment_enabled=False)


def load_partial_config(path: str | Path, overrides: dict[str, object] | None = None) -> PartialTrainConfig:
    from ichd.config import load_config

    return load_config(PartialTrainConfig, path, overrides)


# -- the model split ----------------------------------------------------------------------------------------------

def split_model(cfg: PartialTrainConfig, image_size: int) -> Any:
    """The full slice CNN (ImageNet or ``model.weights`` init) with its trunk frozen in eval mode; raises a
    :class:`ConfigError` when ``freeze_blocks`` exceeds the model's blocks."""
    from ichd.models import create_model

    kwargs: dict[str, Any] = {"input_size": int(image_size)}
    if cfg.model.dropout is not None:
        kwargs["dropout"] = float(cfg.model.dropout)
    model = create_model(cfg.model.name, pretrained=cfg.model.pretrained and cfg.model.weights is None,
                         weights=cfg.model.weights, **kwargs)
    n = model.backbone.num_blocks
    if cfg.partial.freeze_blocks > n:
        raise ConfigError(f"partial.freeze_blocks is {cfg.partial.freeze_blocks} but {cfg.model.name} has {n} blocks")
    for p in trunk_parameters(model, cfg.partial.freeze_blocks):
        p.requires_grad_(False)
    return model


def trunk_parameters(model: Any, k: int) -> list[Any]:
    net = model.backbone.net
    modules = [net._conv_stem, net._bn0, *list(net._blocks)[:k]]
    return [p for m in modules for p in m.parameters()]


def tail_module(model: Any, k: int) -> Any:
    """An ``nn.Module`` whose forward takes trunk maps (B, C, h, w) and returns logits; it shares ``model``'s
    parameters (training it trains ``model``), and keeps the frozen trunk's batch norm in eval mode."""
    import torch
    from torch import nn

    class _Tail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.full = model

        def train(self, mode: bool = True) -> _Tail:
            super().train(mode)
            net = self.full.backbone.net
            for m in (net._bn0, *list(net._blocks)[:k]):
                m.eval()  # frozen: running statistics stay the ImageNet ones the cache was built with
            return self

        def forward(self, maps: torch.Tensor) -> torch.Tensor:
            feats = self.full.backbone.forward_from(maps.float(), k)
            return self.full.forward_head(torch.flatten(self.full.pool(feats), 1))

    return _Tail()


# -- the map cache ----------------------------------------------------------------------------------------------

def _trunk_digest(model: Any, k: int) -> str:
    h = hashlib.sha256()
    for p in trunk_parameters(model, k):
        h.update(p.detach().cpu().float().numpy().tobytes())
    net = model.backbone.net
    for m in (net._bn0, *list(net._blocks)[:k]):
        for name, buf in m.named_buffers():
            if "running" in name:
                h.update(buf.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def map_cache_key(cfg: PartialTrainConfig, model: Any, image_cache: Any) -> dict[str, Any]:
    """What the cached maps depend on: encoder and its weights, freeze depth, the image cache's preprocessing and
    arrays (their recorded sha256)."""
    arrays = hashlib.sha256()
    for entry in sorted(image_cache.manifest["series"], key=lambda e: e["scan_id"]):
        arrays.update(f"{entry['scan_id']}:{entry.get('sha256')}\n".encode())
    return {"model": cfg.model.name, "pretrained": model.default_cfg.get("pretrained"),
            "freeze_blocks": cfg.partial.freeze_blocks, "trunk": _trunk_digest(model, cfg.partial.freeze_blocks),
            "preprocess": image_cache.config.to_dict(), "image_size": int(image_cache.image_size),
            "arrays": arrays.hexdigest()[:16]}


@dataclass
class MapCache:
    root: Path
    manifest: dict[str, Any]

    def maps(self, scan_id: str) -> np.ndarray:
        return np.load(self.root / "maps" / self.manifest["scans"][scan_id], mmap_mode="r")


def build_map_cache(cfg: PartialTrainConfig, model: Any, image_cache: Any, device: Any) -> MapCache:
    """Open the map cache of ``cfg.partial.map_cache`` when its key matches, else (re)build it: every slice of
    ``image_cache`` through the frozen trunk (eval mode, float32), stored as float16."""
    import shutil

    import torch

    from ichd.preprocessing.cache import safe_file_stem
    from ichd.utils.files import atomic_path, atomic_write_text

    root = Path(cfg.partial.map_cache)
    key = map_cache_key(cfg, model, image_cache)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            old = {}
        if old.get("digest") == digest and set(old.get("scans", {})) >= set(image_cache.scan_ids):
            log.info("map cache %s matches (key %s)", root, digest[:12])
            return MapCache(root, old)
        log.info("map cache %s was built for another encoder, freeze depth or image cache: rebuilding", root)
    shutil.rmtree(root / "maps", ignore_errors=True)
    manifest_path.unlink(missing_ok=True)
    (root / "maps").mkdir(parents=True, exist_ok=True)
    k = cfg.partial.freeze_blocks
    backbone = model.backbone.to(device).eval()
    scans: dict[str, str] = {}
    shape: list[int] | None = None
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, scan_id in enumerate(image_cache.scan_ids):
            arr = image_cache.array(scan_id)
            parts = []
            for s in range(0, len(arr), cfg.partial.extract_batch):
                x = torch.from_numpy(np.array(arr[s:s + cfg.partial.extract_batch])).to(device)
                parts.append(backbone.forward_until(model.normalize(x), k).half().cpu().numpy())
            maps = np.concatenate(parts)
            shape = list(maps.shape[1:])
            name = safe_file_stem(scan_id) + ".npy"
            with atomic_path(root / "maps" / name) as tmp, open(tmp, "wb") as f:
                np.save(f, maps)
            scans[scan_id] = name
            if (i + 1) % 10 == 0:
                log.info("map cache: %d/%d scans (%.0f s)", i + 1, len(image_cache.scan_ids),
                         time.perf_counter() - t0)
    manifest = {"format": MAP_CACHE_FORMAT, "key": key, "digest": digest, "shape": shape, "dtype": "float16",
                "scans": scans, "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    log.info("map cache %s: %d scans, maps %s, %.0f s", root, len(scans), shape, manifest["seconds"])
    return MapCache(root, manifest)


# -- data --------------------------------------------------------------------------------------------------------

class MapDataset:
    """Cached maps of ``slice_ids`` (rows of the label table: ``scan_id``, ``slice_index``) as trainer batches
    ``{"image": (C, h, w) float16 map, "target", "slice_id", "scan_id"}``, flipped and shifted when ``augment``."""

    def __init__(self, maps: MapCache, labels: Any, *, augment: PartialOptions | None = None, seed: int = 0) -> None:
        from ichd.data.labels import label_matrix

        self.ids = [str(s) for s in labels.index]
        self.scan_ids = labels["scan_id"].astype(str).tolist()
        self.index = labels["slice_index"].astype(int).tolist()
        self.targets = label_matrix(labels, self.ids, allow_missing=True)
        self.maps = maps
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self._arrays: dict[str, np.ndarray] = {}

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(int(seed) % 2**32)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        scan = self.scan_ids[i]
        if scan not in self._arrays:
            self._arrays[scan] = self.maps.maps(scan)
        m = np.array(self._arrays[scan][self.index[i]], dtype=np.float16)
        if self.augment is not None:
            m = augment_map(m, self.rng, hflip_p=self.augment.hflip_p, shift=self.augment.shift)
        # copies: the map may be a flipped view and the targets a read-only view of the label table
        return {"image": torch.from_numpy(np.ascontiguousarray(m)), "target": torch.tensor(self.targets[i]),
                "slice_id": self.ids[i], "scan_id": scan}


def augment_map(m: np.ndarray, rng: np.random.Generator, *, hflip_p: float, shift: int) -> np.ndarray:
    """A horizontal flip (probability ``hflip_p``) and a shift by up to ``shift`` pixels in y and x of a
    (C, h, w) map, the uncovered border zero-filled. Approximations of the image transforms (module doc)."""
    if hflip_p and rng.random() < hflip_p:
        m = m[:, :, ::-1]
    if shift:
        dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, size=2))
        if dy or dx:
            out = np.zeros_like(m)
            h, w = m.shape[1:]
            out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                m[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            m = out
    return np.ascontiguousarray(m)


# -- training -----------------------------------------------------------------------------------------------------

def train_partial(cfg: PartialTrainConfig, folds: list[int] | None = None, *, out: str | Path | None = None,
                  final_fit: bool = False) -> dict[str, Any]:
    """Partial fine-tuning CV: build or open the map cache, train every fold of ``folds`` (default: all) on the
    others' maps, write each fold's OOF predictions and checkpoint, and merge the folds when all are present
    (:func:`ichd.training.cnn.merge_folds`; its ``cv_metrics.json`` is returned, else ``{}``). ``final_fit``
    also trains on every patient (``fold{all}``)."""
    import torch

    from ichd.config import save_config
    from ichd.data.folds import split_fold
    from ichd.training import variants
    from ichd.training.cnn import FOLD_ALL, load_training_table, merge_folds, write_folds_csv
    from ichd.training.trainer import seed_everything
    from ichd.utils.device import resolve_device

    check_inputs(cfg)
    cnn_cfg = cfg.cnn_config()
    out_root = Path(out if out is not None else cfg.out)
    out_root.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    cache, labels = load_training_table(cnn_cfg)
    fold_of = variants.training_folds(cnn_cfg, labels)
    write_folds_csv(out_root, fold_of)
    n_folds = cfg.data.folds
    todo: list[int | str] = list(range(n_folds)) if folds is None else list(folds)
    bad = [f for f in todo if not (isinstance(f, int) and 0 <= f < n_folds)]
    if bad:
        raise ConfigError(f"folds must be in 0..{n_folds - 1}, got {bad}")
    if final_fit:
        todo.append(FOLD_ALL)
    base = split_model(cfg, int(cache.image_size))
    maps = build_map_cache(cfg, base, cache, device)
    results = {}
    for fold in todo:
        seed_everything(cfg.seed)
        if fold == FOLD_ALL:
            train_df, val_df = labels, None
        else:
            train_df, val_df = split_fold(labels, fold_of, int(fold))
        results[fold] = _train_one(cfg, fold, out_root, maps, train_df, val_df, int(cache.image_size),
                                   cache.config.to_dict(), device)
        save_config(cfg, out_root / f"fold{fold}" / "config.yaml")
    done = [d for d in out_root.glob("fold*") if (d / "oof.csv").is_file()]
    if len(done) == n_folds:
        return merge_folds(out_root, cnn_cfg)
    return {}


def _train_one(cfg: PartialTrainConfig, fold: int | str, out_root: Path, maps: MapCache, train_df: Any,
               val_df: Any, image_size: int, preprocess: dict[str, Any], device: Any) -> dict[str, Any]:
    import functools

    import torch
    from torch.utils.data import DataLoader

    from ichd.config import config_to_dict
    from ichd.evaluation.metrics import CumulativeMetrics
    from ichd.models.checkpoint import save_checkpoint
    from ichd.training.cnn import _jsonable, predictions_frame
    from ichd.training.losses import WeightedBCEWithLogits
    from ichd.training.trainer import Trainer
    from ichd.utils.files import atomic_write_text

    t0 = time.perf_counter()
    fold_dir = out_root / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    k = cfg.partial.freeze_blocks
    model = split_model(cfg, image_size)
    if _trunk_digest(model, k) != maps.manifest["key"]["trunk"]:
        from ichd.errors import ModelError

        raise ModelError(f"fold {fold}: the frozen trunk differs from the one the map cache was built with",
                         hint="a random init must be seeded alike; use model.pretrained or model.weights")
    tail = tail_module(model, k)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.optim.lr_per_epoch[0], weight_decay=cfg.optim.weight_decay)
    train_ds = MapDataset(maps, train_df, augment=cfg.partial, seed=cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True,
                              generator=generator, num_workers=0)
    val_loader = None
    if val_df is not None and len(val_df):
        val_loader = DataLoader(MapDataset(maps, val_df), batch_size=cfg.val_batch_size, shuffle=False)
    trainer = Trainer(tail, WeightedBCEWithLogits(), optimizer, lr_per_epoch=cfg.optim.lr_per_epoch,
                      device=device, metrics_factory=CumulativeMetrics, amp=cfg.optim.amp,
                      amp_dtype=cfg.optim.amp_dtype, channels_last=cfg.optim.channels_last, seed=cfg.seed,
                      deterministic=True, loader_generator=generator,
                      reseed_fns=[functools.partial(MapDataset.reseed, train_ds)], desc=f"partial fold {fold}",
                      max_steps=cfg.optim.max_steps, log_every=50)
    trainer.fit(train_loader, val_loader, val_every=cfg.val_every, skip_last_validation=True)
    metrics = dict(trainer.history[-1]) if trainer.history else {}
    oof = None
    if val_loader is not None:
        oof, preds = trainer.validate(val_loader)
        frame = predictions_frame(val_df, preds.probs, fold)
        atomic_write_text(fold_dir / "oof.csv", frame.to_csv(index=False, float_format="%.6g"))
        metrics.update(oof)
        trainer.history[-1].update(oof)
    trainable = sum(p.numel() for p in params)
    extra = {"partial": {"freeze_blocks": k, "trainable_parameters": int(trainable),
                         "map_cache_digest": maps.manifest["digest"]}, "config_dict": config_to_dict(cfg)}
    save_checkpoint(fold_dir / "final.pt", model.cpu(), config=cfg, preprocess=preprocess, metrics=metrics,
                    fold=fold, epoch=trainer.epoch, extra=extra)
    seconds = time.perf_counter() - t0
    doc = {"fold": fold, "model": cfg.model.name, "image_size": image_size, "epochs": cfg.optim.epochs,
           "finished": True, "history": _jsonable(trainer.history), "train_slices": len(train_df),
           "val_slices": 0 if val_df is None else len(val_df), "wall_seconds": seconds, "device": str(device),
           "threads": torch.get_num_threads(), "freeze_blocks": k, "trainable_parameters": int(trainable)}
    if oof is not None:
        doc["oof"] = _jsonable(oof)
    atomic_write_text(fold_dir / "metrics.json", json.dumps(doc, indent=2))
    log.info("partial fold %s done in %.0f s (%d trainable parameters)", fold, seconds, trainable)
    return doc


def check_inputs(cfg: PartialTrainConfig) -> None:
    """Fail early, with a hint, when the image cache is missing."""
    if not (Path(cfg.data.cache) / "manifest.json").is_file():
        raise InputError(f"image cache {cfg.data.cache!r} not found",
                         hint="build it with `ichd preprocess ... --out CACHE --size S` (see the config's header)")
