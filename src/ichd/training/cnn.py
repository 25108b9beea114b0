"""Slice-CNN training with patient-level cross-validation: :func:`train_cnn` (one fold, or ``"all"`` for the
final fit on every patient) and :func:`merge_folds` (out-of-fold predictions + CV metrics).

Output layout (``OUT`` = ``config.out`` or ``--out``)::

    OUT/folds.csv                 patient_id, fold (the patient-level split; identical for every fold run)
    OUT/fold{K}/config.yaml       the full typed config of the run
    OUT/fold{K}/last.pt           resumable checkpoint (weights + optimizer + history), rewritten each epoch
    OUT/fold{K}/final.pt          the trained model after the last epoch (no optimizer state)
    OUT/fold{K}/metrics.json      per-epoch train/validation metrics, wall time
    OUT/fold{K}/oof.csv           validation-fold predictions (ichd predictions CSV)
    OUT/oof.csv, OUT/cv_metrics.json   written by merge_folds
    OUT/foldall/...               the final fit on all patients (no validation, no oof.csv)

The OOF predictions come from the final-epoch model of each fold (no checkpoint selection on the held-out
fold, so the CV estimate is not optimistically biased).

Under ``torchrun`` (``torchrun --nproc-per-node N -m ichd train cnn ...``) the same call trains data-parallel:
``optim.batch_size`` is the global batch, split over the processes; every rank trains on its shard of each
epoch's draws and validates its shard of the validation fold; rank 0 alone writes every file above (see
:mod:`ichd.training.distributed` and ``docs/scaling.md``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichd.constants import LABELS
from ichd.errors import ConfigError, InputError, ModelError
from ichd.training.config import CnnTrainConfig
from ichd.training.distributed import DistInfo
from ichd.utils.logging import get_logger

log = get_logger(__name__)

FOLD_ALL = "all"
ID_COLUMNS = ("slice_id", "scan_id", "patient_id", "slice_index", "fold")


@dataclass
class FoldResult:
    """What one :func:`train_cnn` call produced."""

    fold: int | str
    out_dir: Path
    final_checkpoint: Path
    metrics: dict[str, Any]
    oof_csv: Path | None
    resumed_from_epoch: int
    seconds: float


def resolve_labels_path(path: str) -> Path:
    """``path`` as given when it exists (from the working directory), else under the data folder."""
    p = Path(path).expanduser()
    if p.is_file() or p.is_absolute():
        return p
    from ichd.paths import data_dir

    return data_dir() / p


def fold_dir_name(fold: int | str) -> str:
    return f"fold{fold}"


@contextlib.contextmanager
def fold_lock(fold_dir: Path) -> Iterator[None]:
    """Hold ``fold_dir/.lock`` (this process id) while training, so two processes never train one fold folder
    at once (e.g. a second chain of folds started beside the CV script). A lock left by a dead process is
    taken over; one held by a live process is an :class:`InputError`."""
    import os

    lock = fold_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid > 0 and _pid_alive(pid):
                raise InputError(f"{fold_dir} is being trained by process {pid}",
                                 hint="wait for it, or train another fold") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise InputError(f"cannot take the lock {lock}", hint="remove it if no training runs there")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_training_table(cfg: CnnTrainConfig) -> tuple[Any, Any]:
    """``(cache, labels)``: the opened cache and the label table restricted to cached slices, with scan and
    patient ids from the cache (so RSNA labels, which carry no scan ids, work the same way). Several label files
    (``data.labels`` as a list) are read with :func:`ichd.data.labels.read_label_sources` into one table with a
    ``source`` column; missing labels stay ``NaN`` (masked by the loss and the metrics)."""
    from ichd.data.labels import attach_scans, read_label_sources, read_labels
    from ichd.preprocessing.cache import open_cache

    cache = open_cache(cfg.data.cache)
    files = cfg.data.label_files
    if len(files) == 1 and cfg.data.sources is None:
        labels = read_labels(resolve_labels_path(files[0]))
    else:
        labels = read_label_sources([resolve_labels_path(f) for f in files], cfg.data.sources)
    labels = attach_scans(labels, cache.slices, how="inner")
    if not len(labels):
        raise InputError(f"no labelled slice of {cfg.data.labels!r} is in the cache {cfg.data.cache!r}",
                         hint="build the cache from the same data as the label file")
    labels = labels.sort_values(["scan_id", "slice_index"])
    return cache, labels


def _config_fingerprint(cfg: CnnTrainConfig) -> dict[str, Any]:
    """The parts of the config that must match to resume a run (everything but run-placement details)."""
    from ichd.config import config_to_dict

    d = config_to_dict(cfg)
    for k in ("out", "device", "threads", "val_every"):
        d.pop(k, None)
    d["data"].pop("num_workers", None)
    return d


def _seed_augmentation(dataset: Any, augment: Any, seed: int) -> None:
    """Give ``dataset`` a fresh training augmentation seeded with ``seed``. Albumentations 2 keeps its own
    random generator, which global seeding does not reach, so each epoch (and each DataLoader worker) gets a
    transform built with its own seed: augmentation is reproducible, also across resumes."""
    from ichd.data.augment import train_augmentation

    dataset.transform = train_augmentation(augment, seed=int(seed) % 2**32,
                                           windows=list(dataset.cache.config.windows.values()))


def _init_worker(augment: Any, worker_id: int, rank: int = 0) -> None:
    """DataLoader ``worker_init_fn``: seed the worker's augmentation from its torch seed, which derives from
    the loader's generator (re-seeded by the trainer every epoch, alike on every rank; ``rank`` makes the
    ranks' augmentation draws independent)."""
    import torch

    from ichd.training.distributed import rank_seed

    info = torch.utils.data.get_worker_info()
    if info is not None and getattr(info.dataset, "transform", None) is not None:
        _seed_augmentation(info.dataset, augment, rank_seed(info.seed, rank))


def make_loaders(cfg: CnnTrainConfig, cache: Any, train_df: Any, val_df: Any | None, seed: int,
                 dist: DistInfo | None = None) -> tuple[Any, Any, Any, Any]:
    """Training loader (augmented; shuffled or class-balanced; seeded generator), validation loader, the
    generator, and the training dataset.

    Under torchrun (``dist`` with more than one process) the training loader yields this rank's
    :class:`~ichd.training.distributed.ShardSampler` share of the epoch's draws in batches of
    ``optim.batch_size / world_size`` (the config's batch is the global one), and the validation loader this
    rank's :class:`~ichd.training.distributed.EvalShardSampler` share of the validation slices."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from ichd.data.augment import train_augmentation
    from ichd.data.datasets import SliceDataset
    from ichd.data.sampling import training_sampler
    from ichd.training import variants
    from ichd.training.distributed import SINGLE, EvalShardSampler, ShardSampler, per_rank_batch

    dist = dist or SINGLE
    batch_size = per_rank_batch(cfg.optim.batch_size, dist.world_size)
    windows = list(cache.config.windows.values())
    transform = train_augmentation(cfg.augment, seed=seed, windows=windows) if cfg.augment_enabled else None
    init_worker = functools.partial(_init_worker, cfg.augment, rank=dist.rank)
    masks = variants.training_masks(cfg, int(cache.image_size), list(train_df.index))  # RADnet's mask loss
    train_ds = SliceDataset(cache, list(train_df.index), labels=train_df, transform=transform, masks=masks)
    generator = torch.Generator().manual_seed(seed)
    workers = cfg.data.num_workers
    common: dict[str, Any] = {"num_workers": workers, "pin_memory": torch.cuda.is_available()}
    sampler: Any = None
    if cfg.data.balanced_sampling or cfg.data.source_share is not None or cfg.data.epoch_samples is not None:
        sampler = training_sampler(train_df, positive_fraction=(cfg.data.positive_fraction
                                                                if cfg.data.balanced_sampling else None),
                                   source_share=cfg.data.source_share, num_samples=cfg.data.epoch_samples,
                                   seed=seed)
        sampler.generator = generator  # re-seeded by the trainer every epoch, like the shuffle order
    elif dist.enabled:
        sampler = RandomSampler(train_ds, generator=generator)  # what shuffle=True builds
    if sampler is not None and dist.enabled:
        sampler = ShardSampler(sampler, dist.rank, dist.world_size)
    if sampler is not None:
        train_loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, drop_last=True,
                                  generator=generator, worker_init_fn=init_worker, **common)
    else:
        train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                  generator=generator, worker_init_fn=init_worker, **common)
    val_loader = None
    if val_df is not None and len(val_df):
        val_ds = SliceDataset(cache, list(val_df.index), labels=val_df, transform=None)
        val_sampler = EvalShardSampler(len(val_ds), dist.rank, dist.world_size) if dist.enabled else None
        val_loader = DataLoader(val_ds, batch_size=cfg.val_batch_size, shuffle=False, sampler=val_sampler,
                                **common)
    return train_loader, val_loader, generator, train_ds


def write_folds_csv(out: Path, folds: Any) -> Path:
    """``OUT/folds.csv`` (patient_id, fold), written atomically."""
    from ichd.utils.files import atomic_write_text

    table = folds.rename_axis("patient_id").reset_index()
    return atomic_write_text(out / "folds.csv", table.to_csv(index=False))


def predictions_frame(meta_df: Any, probs: np.ndarray, fold: int | str) -> Any:
    """An ichd predictions table: id columns + ``fold`` + one probability column per label."""
    import pandas as pd

    frame = pd.DataFrame({
        "slice_id": meta_df.index.astype(str),
        "scan_id": meta_df["scan_id"].astype(str).to_numpy(),
        "patient_id": meta_df["patient_id"].astype(str).to_numpy(),
        "slice_index": meta_df["slice_index"].astype(int).to_numpy(),
        "fold": fold,
    })
    for c, lab in enumerate(LABELS):
        frame[lab] = probs[:, c].astype(np.float64)
    return frame


def train_cnn(cfg: CnnTrainConfig, fold: int | str, *, out: str | Path | None = None,
              restart: bool = False) -> FoldResult:
    """Train the slice CNN of ``cfg`` on every fold but ``fold`` and validate on ``fold`` (or on all patients,
    without validation, for ``fold="all"``). Resumes from ``OUT/fold{K}/last.pt`` unless ``restart``.
    The fold folder is locked while training (:func:`fold_lock`).

    Under torchrun (``RANK`` / ``WORLD_SIZE`` in the environment) every process calls this with the same
    arguments: they join one process group for the call (left again on return or error), train with
    DistributedDataParallel, and rank 0 holds the lock and writes the outputs; every rank returns the same
    :class:`FoldResult` once the files are written.
    """
    from ichd.models import model_spec
    from ichd.training.distributed import distributed_session, run_on_main

    if fold != FOLD_ALL and not (isinstance(fold, int) and 0 <= fold < cfg.data.folds):
        raise ConfigError(f"fold must be 0..{cfg.data.folds - 1} or {FOLD_ALL!r}, got {fold!r}")
    if cfg.model.pretrained and cfg.model.weights is None and not model_spec(cfg.model.name).pretrained_available:
        raise ConfigError(f"model.pretrained is true but {cfg.model.name!r} ships no offline weights",
                          hint="set model.pretrained: false (random init) or model.weights: PATH")
    out_root = Path(out if out is not None else cfg.out)
    fold_dir = out_root / fold_dir_name(fold)
    with distributed_session(cfg.device) as (dist, device), contextlib.ExitStack() as stack:

        def lock() -> None:
            from ichd.utils.files import remove_stale_temps

            fold_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(fold_lock(fold_dir))
            remove_stale_temps(fold_dir)  # a killed run's half-written checkpoint (never read: not renamed)

        run_on_main(lock)  # rank 0 locks; when it cannot, every rank stops
        return _train_fold(cfg, fold, out_root, restart=restart, dist=dist, device=device)


def _train_fold(cfg: CnnTrainConfig, fold: int | str, out_root: Path, *, restart: bool,
                dist: DistInfo | None = None, device: Any = None) -> FoldResult:
    import torch

    from ichd.config import config_to_dict, save_config
    from ichd.data.folds import split_fold
    from ichd.evaluation.metrics import CumulativeMetrics
    from ichd.models import create_model
    from ichd.models.checkpoint import read_checkpoint, save_checkpoint
    from ichd.training import variants
    from ichd.training.distributed import SINGLE, barrier, run_on_main
    from ichd.training.trainer import Callback, Trainer, seed_everything
    from ichd.utils.device import resolve_device
    from ichd.utils.files import atomic_write_text

    t0 = time.perf_counter()
    dist = dist or SINGLE
    main = dist.is_main  # rank 0 (or the only process) writes every file
    fold_dir = out_root / fold_dir_name(fold)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if device is None:
        device = resolve_device(cfg.device)
    seed_everything(cfg.seed, deterministic=cfg.deterministic)

    cache, labels = load_training_table(cfg)  # every rank reads the cache: it must exist on every node
    folds = variants.training_folds(cfg, labels)  # data.folds_file, or computed
    if main:
        write_folds_csv(out_root, folds)
    if fold == FOLD_ALL:
        train_df, val_df = labels, None
        val_patients: list[str] = []
    else:
        train_df, val_df = split_fold(labels, folds, int(fold))
        val_patients = sorted(folds.index[folds == fold].astype(str))
    log.info("fold %s: %d train slices (%d patients), %d validation slices (%d patients)", fold, len(train_df),
             train_df["patient_id"].nunique(), 0 if val_df is None else len(val_df), len(val_patients))

    model_kwargs: dict[str, Any] = {"input_size": int(cache.image_size)}
    if cfg.model.dropout is not None:
        model_kwargs["dropout"] = float(cfg.model.dropout)
    pretrained = cfg.model.pretrained and cfg.model.weights is None
    model = create_model(cfg.model.name, pretrained=pretrained, weights=cfg.model.weights, **model_kwargs)
    variants.freeze_parameters(model, cfg.model.freeze)
    if cfg.targets == "any":
        variants.init_any_only_head(model, train_df)
    optimizer = variants.make_optimizer(cfg, model)
    train_loader, val_loader, generator, train_ds = make_loaders(cfg, cache, train_df, val_df, cfg.seed, dist)
    reseed = []
    if cfg.augment_enabled and cfg.data.num_workers == 0:
        # Without worker processes the augmentation runs here: re-seed it at the start of every epoch.
        reseed = [functools.partial(_seed_augmentation, train_ds, cfg.augment)]
    preprocess = cache.config.to_dict()
    fingerprint = _config_fingerprint(cfg)
    extra = {"val_patients": val_patients, "folds": cfg.data.folds, "fold_seed": cfg.data.fold_seed,
             "cache": str(cfg.data.cache), "labels_file": str(cfg.data.labels)}

    earlier_seconds = 0.0  # wall time of earlier sessions of this fold (resumed runs)

    def wall_seconds() -> float:
        return earlier_seconds + time.perf_counter() - t0

    class _Checkpointer(Callback):
        """Save ``last.pt`` (resumable) and ``metrics.json`` after every epoch."""

        def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
            if not main:
                return
            save_checkpoint(fold_dir / "last.pt", trainer.model, config=cfg, preprocess=preprocess,
                            metrics=metrics, fold=fold, epoch=epoch + 1,
                            training_state={**trainer.state_dict(), "fingerprint": fingerprint,
                                            "wall_seconds": wall_seconds()}, extra=extra)
            _write_metrics(trainer.history, final=False)

    def _write_metrics(history: list[dict[str, float]], *, final: bool, oof: dict[str, float] | None = None) -> None:
        doc = {"fold": fold, "model": cfg.model.name, "image_size": int(cache.image_size),
               "epochs": cfg.optim.epochs, "finished": final, "history": _jsonable(history),
               "train_slices": len(train_df), "val_slices": 0 if val_df is None else len(val_df),
               "val_patients": val_patients, "wall_seconds": wall_seconds(),
               "device": str(device), "threads": torch.get_num_threads(),
               "world_size": dist.world_size, "batch_per_process": cfg.optim.batch_size // dist.world_size}
        if oof is not None:
            doc["oof"] = _jsonable(oof)
        atomic_write_text(fold_dir / "metrics.json", json.dumps(doc, indent=2))

    trainer = Trainer(model, variants.training_loss(cfg), optimizer, lr_per_epoch=cfg.optim.lr_per_epoch,
                      device=device, metrics_factory=CumulativeMetrics, grad_accum=cfg.optim.grad_accum,
                      amp=cfg.optim.amp, amp_dtype=cfg.optim.amp_dtype, channels_last=cfg.optim.channels_last, seed=cfg.seed,
                      deterministic=cfg.deterministic, loader_generator=generator, reseed_fns=reseed,
                      scan_ids=dict(zip(labels.index.astype(str), labels["scan_id"].astype(str))),
                      callbacks=[_Checkpointer()], desc=f"fold {fold}", distributed=dist,
                      sync_batchnorm=device.type == "cuda", max_steps=cfg.optim.max_steps,
                      image_sizes=variants.train_image_sizes(cfg, int(cache.image_size)),
                      aux_loss=variants.mask_aux_loss(cfg, model))

    resumed_from = 0
    last = fold_dir / "last.pt"

    def read_resume_state() -> tuple[dict[str, Any], float] | None:
        """Rank 0 reads last.pt (and the earlier wall time); under torchrun every rank gets the same copy."""
        if restart or not last.is_file():
            return None
        try:
            raw = read_checkpoint(last)  # written atomically; damage after the fact fails here, never loads
        except ModelError as e:
            raise ModelError(f"fold {fold}: cannot resume: {e.message}",
                             hint="train this fold from scratch with --restart (or restore the file)") from e
        if not variants.same_fingerprint(raw.get("fingerprint"), fingerprint):
            raise ConfigError(f"{last} belongs to a run with a different configuration",
                              hint="use another --out folder, or --restart to start this fold again")
        # last.pt is written at the end of an epoch; metrics.json also counts the final validation and OOF
        # writing of a finished session, so the larger of the two is the earlier sessions' wall time.
        seconds = float(raw.get("wall_seconds", 0.0))
        metrics_file = fold_dir / "metrics.json"
        if metrics_file.is_file():
            try:
                seconds = max(seconds, float(json.loads(metrics_file.read_text())["wall_seconds"]))
            except (ValueError, KeyError, TypeError):
                log.warning("fold %s: %s is unreadable; wall time restarts from last.pt", fold, metrics_file)
        return raw, seconds

    resume = run_on_main(read_resume_state)
    if resume is not None:
        raw, earlier_seconds = resume
        trainer.model.load_state_dict(raw["state_dict"])
        trainer.load_state_dict(raw)
        resumed_from = trainer.epoch
        del raw, resume
        log.info("fold %s: resuming after epoch %d of %d", fold, trainer.epoch, trainer.epochs)
    if main:
        save_config(cfg, fold_dir / "config.yaml")

    trainer.fit(train_loader, val_loader, val_every=cfg.val_every, skip_last_validation=True)
    final_metrics = dict(trainer.history[-1]) if trainer.history else {}
    oof_csv = None
    oof_metrics = None
    if val_loader is not None:
        val_metrics, preds = trainer.validate(  # under torchrun: every rank's shard, gathered
            val_loader, views=variants.oof_views(cfg, int(cache.image_size)))
        oof_metrics = val_metrics
        frame = predictions_frame(val_df, preds.probs, fold)
        if list(frame["slice_id"]) != [str(s) for s in preds.meta.get("slice_id", frame["slice_id"])]:
            raise RuntimeError("validation predictions are not in the order of the validation table")
        oof_csv = fold_dir / "oof.csv"
        if main:
            atomic_write_text(oof_csv, frame.to_csv(index=False, float_format="%.6g"))
        final_metrics.update(val_metrics)
        if trainer.history:  # the last epoch's validation is this one (fit skipped its own)
            trainer.history[-1].update(val_metrics)
    final = fold_dir / "final.pt"
    if main:
        save_checkpoint(final, trainer.model, config=cfg, preprocess=preprocess, metrics=final_metrics,
                        fold=fold, epoch=trainer.epoch, extra={**extra, "config_dict": config_to_dict(cfg)})
        _write_metrics(trainer.history, final=True, oof=oof_metrics)
    barrier()  # the other ranks return once rank 0 has written the outputs
    seconds = wall_seconds()
    log.info("fold %s done in %.0f s: %s", fold, seconds, final)
    return FoldResult(fold=fold, out_dir=fold_dir, final_checkpoint=final, metrics=final_metrics,
                      oof_csv=oof_csv, resumed_from_epoch=resumed_from, seconds=seconds)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def merge_folds(out: str | Path, cfg: CnnTrainConfig | None = None) -> dict[str, Any]:
    """Concatenate ``OUT/fold*/oof.csv`` into ``OUT/oof.csv`` and compute ``OUT/cv_metrics.json``: pooled
    out-of-fold slice metrics (weighted log loss, per-label AUC), scan-level AUC (scan score = max over its
    slices), the same per data source (``per_source``, for multi-source tables; ``oof.csv`` then gains a
    ``source`` column), per-fold metrics, and the total training wall time. Needs every fold of the split."""
    import pandas as pd

    from ichd.config import load_config
    from ichd.data.labels import label_matrix
    from ichd.evaluation.metrics import CumulativeMetrics
    from ichd.utils.files import atomic_write_text

    out = Path(out)
    fold_dirs = sorted(p for p in out.glob("fold*") if p.is_dir() and p.name != fold_dir_name(FOLD_ALL))
    csvs = [p / "oof.csv" for p in fold_dirs if (p / "oof.csv").is_file()]
    if not csvs:
        raise InputError(f"no fold*/oof.csv under {str(out)!r}", hint="train the folds first (ichd train cnn)")
    if cfg is None:
        cfg = load_config(CnnTrainConfig, fold_dirs[0] / "config.yaml")
    expected = cfg.data.folds
    if len(csvs) != expected:
        have = sorted(p.parent.name for p in csvs)
        raise InputError(f"{len(csvs)} of {expected} folds have oof.csv under {str(out)!r} ({have})",
                         hint="finish the missing folds, then merge again")
    frames = [pd.read_csv(p, dtype={"slice_id": str, "scan_id": str, "patient_id": str}) for p in csvs]
    oof = pd.concat(frames, ignore_index=True).sort_values(["scan_id", "slice_index"]).reset_index(drop=True)
    if oof["slice_id"].duplicated().any():
        raise InputError("a slice appears in two folds' oof.csv", hint="the folds come from different splits")
    _, labels = load_training_table(cfg)
    y = label_matrix(labels, oof["slice_id"].tolist(), allow_missing=True)
    probs = oof[list(LABELS)].to_numpy(np.float64)
    acc = CumulativeMetrics()
    acc.update(probs, y, oof["scan_id"].tolist())
    pooled = acc.compute()
    per_source: dict[str, Any] = {}
    if "source" in labels.columns:
        source = labels["source"].reindex(oof["slice_id"]).astype(str).to_numpy()
        oof.insert(oof.columns.get_loc("fold") + 1, "source", source)
        for name in sorted(set(source)):
            rows = source == name
            src_acc = CumulativeMetrics()
            src_acc.update(probs[rows], y[rows], oof.loc[rows, "scan_id"].tolist())
            per_source[name] = src_acc.compute()
    per_fold = {}
    walls = {}
    for d in fold_dirs:
        m = json.loads((d / "metrics.json").read_text())
        per_fold[d.name] = m.get("oof", {})
        walls[d.name] = m.get("wall_seconds")
    atomic_write_text(out / "oof.csv", oof.to_csv(index=False, float_format="%.6g"))
    doc = {"pooled": _jsonable(pooled), "per_source": _jsonable(per_source), "per_fold": _jsonable(per_fold),
           "wall_seconds": walls,
           "total_wall_seconds": float(sum(v for v in walls.values() if v)), "n_slices": len(oof),
           "n_scans": int(oof["scan_id"].nunique()), "model": cfg.model.name, "epochs": cfg.optim.epochs,
           "lr_per_epoch": cfg.optim.lr_per_epoch}
    atomic_write_text(out / "cv_metrics.json", json.dumps(doc, indent=2))
    return doc
