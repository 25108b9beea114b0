"""CNN embeddings and probabilities per slice: the input of the sequence stage.

:func:`embed_slices` runs one slice CNN over a scan's slices. :func:`embed_cache` runs it over every scan of
a preprocessed cache and returns an :class:`EmbeddingTable` (saved as one ``.npz`` of plain arrays, no pickles).

Out-of-fold (OOF) mode: given the per-fold CNN checkpoints and the CNN's patient -> fold assignment, each
patient's slices are embedded by the fold model that did *not* train on that patient, so a sequence model
trained on the table never sees over-confident in-sample features. The fold CNNs are different networks; they
are fine-tuned briefly from the same ImageNet initialisation, so their embedding spaces are assumed to be
approximately aligned, which is what makes OOF embeddings from different fold models usable as one training
table (the same assumption every OOF-stacking pipeline makes; it is not checked here).

The table also stores each CNN's classifier weights (``head_weight``, one (6, D) matrix per fold model) for
the weight-magnitude feature selectors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichd.constants import LABELS
from ichd.errors import InputError, ModelError
from ichd.utils.files import sha256_file
from ichd.utils.logging import get_logger

log = get_logger(__name__)

#: Version of the ``.npz`` layout written by :meth:`EmbeddingTable.save`.
EMBEDDING_FORMAT = "ichd-embeddings/1"
#: ``fold`` value of rows embedded by a single (not per-fold) model.
NO_FOLD = -1


def classifier_weight(model: Any) -> np.ndarray:
    """The slice CNN's final linear layer weight (num_classes, num_features) as float32 numpy."""
    head = getattr(model, "classifier", None)
    weight = getattr(head, "weight", None)
    if weight is None or weight.ndim != 2:
        raise ModelError(f"model {type(model).__name__} has no linear `classifier` layer to read weights from")
    return weight.detach().cpu().numpy().astype(np.float32)


def embed_slices(model: Any, slices: Any, *, batch_size: int = 32, device: Any = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Run slice CNN ``model`` over ``slices`` (z, 3, S, S) (cache uint8 0..255 or float in [0, 1]).

    Returns ``(features (z, D) float32, probs (z, num_classes) float32)``: the embedding of
    ``model.forward_features`` and the sigmoid of ``model.forward_head`` on it. The model normalises its input
    itself; the model is put in eval mode. ``device`` defaults to the model's device.
    """
    import torch

    arr = np.asarray(slices)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise InputError(f"slices must be (z, 3, S, S), got shape {arr.shape}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    feats, probs = [], []
    with torch.inference_mode():
        for i in range(0, arr.shape[0], batch_size):
            x = torch.from_numpy(np.array(arr[i:i + batch_size], copy=True))  # memmaps are read-only
            if x.dtype not in (torch.uint8, torch.float32):
                x = x.float()
            f = model.forward_features(x.to(dev))
            p = torch.sigmoid(model.forward_head(f))
            feats.append(f.float().cpu().numpy())
            probs.append(p.float().cpu().numpy())
    if not feats:
        d = int(getattr(model, "num_features", 0))
        return np.zeros((0, d), np.float32), np.zeros((0, len(LABELS)), np.float32)
    return np.concatenate(feats).astype(np.float32), np.concatenate(probs).astype(np.float32)


@dataclass
class EmbeddingTable:
    """Per-slice CNN embeddings and probabilities, rows sorted by (scan_id, slice_index).

    Attributes:
        slice_id, scan_id, patient_id: string arrays (N,).
        slice_index: int array (N,), 0 = most inferior slice of the scan.
        fold: int array (N,): the CNN fold whose held-out patients include this row (:data:`NO_FOLD` when one
            model embedded everything).
        features: float32 (N, D); probs: float32 (N, 6) in :data:`LABELS` order.
        head_weight: {fold: (6, D) float32} classifier weight of each CNN used (key :data:`NO_FOLD` for one).
        meta: provenance (mode, CNN name, checkpoint files + sha256, cache, preprocessing, timings).
    """

    slice_id: np.ndarray
    scan_id: np.ndarray
    patient_id: np.ndarray
    slice_index: np.ndarray
    fold: np.ndarray
    features: np.ndarray
    probs: np.ndarray
    head_weight: dict[int, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.slice_id)
        for name in ("scan_id", "patient_id", "slice_index", "fold", "features", "probs"):
            if len(getattr(self, name)) != n:
                raise InputError(f"embedding table column {name!r} has {len(getattr(self, name))} rows, "
                                 f"expected {n}")
        if self.probs.ndim != 2 or self.probs.shape[1] != len(LABELS):
            raise InputError(f"embedding table probs must be (N, {len(LABELS)}), got {self.probs.shape}")

    @property
    def n_features(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return len(self.slice_id)

    def scan_groups(self) -> list[np.ndarray]:
        """Row indices of each scan, in table order, each sorted by slice_index."""
        from ichd.data.labels import scan_row_groups

        return scan_row_groups(self.scan_id, self.slice_index)

    def sorted(self) -> EmbeddingTable:
        """The table with its rows in the documented order: by (scan_id, slice_index)."""
        return self.subset(np.lexsort((self.slice_index, self.scan_id)))

    def subset(self, rows: np.ndarray) -> EmbeddingTable:
        """A table of the given rows (same head weights and meta)."""
        return EmbeddingTable(self.slice_id[rows], self.scan_id[rows], self.patient_id[rows],
                              self.slice_index[rows], self.fold[rows], self.features[rows], self.probs[rows],
                              dict(self.head_weight), dict(self.meta))

    def save(self, path: str | Path) -> Path:
        """Write the table as one ``.npz`` (atomic; plain arrays, readable with ``allow_pickle=False``)."""
        from ichd.utils.files import atomic_path

        path = Path(path)
        if path.suffix != ".npz":
            raise InputError(f"embedding file {str(path)!r} must end in .npz")
        folds = sorted(self.head_weight)
        arrays = {
            "slice_id": self.slice_id.astype(str), "scan_id": self.scan_id.astype(str),
            "patient_id": self.patient_id.astype(str), "slice_index": self.slice_index.astype(np.int32),
            "fold": self.fold.astype(np.int32), "features": self.features.astype(np.float32),
            "probs": self.probs.astype(np.float32), "head_folds": np.asarray(folds, dtype=np.int32),
            "head_weight": (np.stack([self.head_weight[f] for f in folds]).astype(np.float32) if folds
                            else np.zeros((0, len(LABELS), self.n_features), np.float32)),
            "meta": np.asarray(json.dumps({"format": EMBEDDING_FORMAT, **self.meta}, sort_keys=True)),
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingTable:
        """Read a table written by :meth:`save` (:class:`InputError` for a missing or foreign file)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"embedding file {str(path)!r} not found", hint="write one with `ichd embed`")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"cannot read embedding file {str(path)!r}: {e}",
                             hint="re-create it with `ichd embed`") from e
        if meta.get("format") != EMBEDDING_FORMAT:
            raise InputError(f"{str(path)!r} has format {meta.get('format')!r}, expected {EMBEDDING_FORMAT!r}",
                             hint="re-create it with this version of `ichd embed`")
        try:
            heads = {int(f): w for f, w in zip(data["head_folds"], data["head_weight"])}
            return cls(data["slice_id"], data["scan_id"], data["patient_id"], data["slice_index"],
                       data["fold"], data["features"], data["probs"], heads, meta)
        except KeyError as e:
            raise InputError(f"embedding file {str(path)!r} lacks array {e}", hint="re-create it") from e


def read_fold_assignment(path: str | Path) -> dict[str, int]:
    """patient_id -> fold from a CSV with ``patient_id`` and ``fold`` columns (the CNN run's ``folds.csv``, or
    any ichd predictions CSV such as its ``oof.csv``); read and checked by
    :func:`ichd.data.folds.read_patient_folds` (a patient in two folds is an :class:`InputError`)."""
    from ichd.data.folds import read_patient_folds

    return {str(p): int(f) for p, f in read_patient_folds(path).items()}


def run_checkpoints(run_dir: str | Path, folds: Mapping[str, int], name: str = "final.pt") -> dict[int, Path]:
    """``{fold: run_dir/fold{fold}/name}`` for every fold in ``folds``; a missing file is an :class:`InputError`."""
    run_dir = Path(run_dir)
    out: dict[int, Path] = {}
    for fold in sorted(set(folds.values())):
        path = run_dir / f"fold{fold}" / name
        if not path.is_file():
            raise InputError(f"CNN run {str(run_dir)!r} has no checkpoint for fold {fold} ({path})",
                             hint="wait for every fold of `ichd train cnn` to finish")
        out[fold] = path
    return out


def _check_preprocessing(cache: Any, ckpt: Any) -> None:
    """The cache must hold what the CNN was trained on (image size and windows)."""
    want = ckpt.preprocess or {}
    have = cache.config.to_dict()
    for key in ("image_size", "windows"):
        if key in want and want[key] != have.get(key):
            raise InputError(f"cache {str(cache.root)!r} has {key}={have.get(key)!r} but CNN {str(ckpt.path)!r} "
                             f"was trained with {want[key]!r}",
                             hint="build a matching cache with `ichd preprocess` (see --size)")


def embed_cache(cache_dir: str | Path, checkpoints: Mapping[int, str | Path], *,
                patient_folds: Mapping[str, int] | None = None, batch_size: int = 32,
                device: str | None = None, scan_ids: Collection[str] | None = None) -> EmbeddingTable:
    """Embed every slice of the cache at ``cache_dir``.

    Args:
        checkpoints: ``{NO_FOLD: path}`` for one model, or ``{fold: path}`` for OOF mode.
        patient_folds: OOF mode: patient_id -> fold (the CNN's assignment). Every cached patient must be in it,
            and every fold used needs a checkpoint.
        batch_size: slices per forward pass.
        device: "auto"/None, "cpu", "cuda[:N]".
        scan_ids: embed only these scans of the cache (None: every scan); an id the cache lacks is an error.
    """
    from ichd.models.checkpoint import load_checkpoint
    from ichd.preprocessing.cache import open_cache
    from ichd.utils.device import resolve_device
    from ichd.utils.progress import progress_bar

    t0 = time.perf_counter()
    cache = open_cache(cache_dir)
    dev = resolve_device(device)
    oof = patient_folds is not None
    if not checkpoints:
        raise InputError("no CNN checkpoint given", hint="pass --checkpoint or --cnn-run")
    if not oof and set(checkpoints) != {NO_FOLD}:
        raise InputError("several fold checkpoints need the patient -> fold assignment (OOF mode)")
    scans = sorted(cache.scan_ids)
    if scan_ids is not None:
        unknown = sorted(set(scan_ids) - set(scans))
        if unknown:
            raise InputError(f"{len(unknown)} scan(s) are not in cache {str(cache_dir)!r}, e.g. {unknown[0]!r}",
                             hint="name scans of this cache (its manifest lists them)")
        scans = sorted(set(scan_ids))
    if not scans:
        raise InputError(f"cache {str(cache_dir)!r} holds no scans", hint="build it with `ichd preprocess`")
    scan_fold: dict[str, int] = {}
    for scan_id in scans:
        if not oof:
            scan_fold[scan_id] = NO_FOLD
            continue
        patient = str(cache.series[scan_id]["patient_id"])
        if patient not in patient_folds:  # type: ignore[operator]
            raise InputError(f"scan {scan_id!r} in cache {str(cache.root)!r}: its patient has no fold in the "
                             f"CNN's fold assignment", hint="embed the cache the CNN cross-validation used")
        fold = int(patient_folds[patient])  # type: ignore[index]
        if fold not in checkpoints:
            raise InputError(f"no CNN checkpoint for fold {fold} (needed for scan {scan_id!r})",
                             hint=f"fold checkpoints given: {sorted(checkpoints)}")
        scan_fold[scan_id] = fold
    used = sorted(set(scan_fold.values()))
    rows: dict[str, list[Any]] = {k: [] for k in ("slice_id", "scan_id", "patient_id", "slice_index", "fold")}
    feats: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    heads: dict[int, np.ndarray] = {}
    cnn_meta: dict[str, Any] = {}
    total = int(sum(int(cache.series[s]["n_slices"]) for s in scans))
    bar = progress_bar(desc="embed", total=total, unit="slice")
    try:
        for fold in used:
            ckpt = load_checkpoint(checkpoints[fold], map_location=dev)
            _check_preprocessing(cache, ckpt)
            heads[fold] = classifier_weight(ckpt.model)
            cnn_meta[str(fold)] = {"path": str(checkpoints[fold]), "sha256": sha256_file(checkpoints[fold]),
                                   "model_name": ckpt.model_name, "fold": ckpt.fold,
                                   "num_features": int(ckpt.model.num_features)}
            for scan_id in (s for s in scans if scan_fold[s] == fold):
                table = cache.scan_slices(scan_id)
                arr = cache.array(scan_id)
                idx = table["slice_index"].to_numpy(dtype=np.int64)
                f, p = embed_slices(ckpt.model, arr[idx], batch_size=batch_size, device=dev)
                feats.append(f)
                probs.append(p)
                rows["slice_id"].extend(table["slice_id"].astype(str))
                rows["scan_id"].extend([scan_id] * len(idx))
                rows["patient_id"].extend(table["patient_id"].astype(str))
                rows["slice_index"].extend(idx.tolist())
                rows["fold"].extend([fold] * len(idx))
                bar.update(len(idx))
            del ckpt
    finally:
        bar.close()
    names = {m["model_name"] for m in cnn_meta.values()}
    if len(names) > 1:
        raise ModelError(f"fold checkpoints are different architectures {sorted(names)}; their embeddings cannot "
                         "form one table", hint="use the fold checkpoints of one CNN cross-validation run")
    emb = EmbeddingTable(np.asarray(rows["slice_id"], dtype=str), np.asarray(rows["scan_id"], dtype=str),
                         np.asarray(rows["patient_id"], dtype=str), np.asarray(rows["slice_index"], np.int64),
                         np.asarray(rows["fold"], np.int64), np.concatenate(feats), np.concatenate(probs), heads,
                         {"mode": "oof" if oof else "single", "cnn": cnn_meta, "model_name": names.pop(),
                          "cache": str(cache_dir), "preprocess": cache.config.to_dict(),
                          "seconds": round(time.perf_counter() - t0, 2), "device": str(dev)})
    log.info("embedded %d slices of %d scans in %.1f s", len(emb), len(scans), time.perf_counter() - t0)
    return emb.sorted()
