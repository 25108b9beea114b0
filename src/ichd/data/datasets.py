"""Torch datasets over the preprocessing cache (:mod:`ichd.preprocessing.cache`).

* :class:`SliceDataset`: one item per slice, for the slice CNN.
* :class:`ScanDataset`: one item per scan (its slices in inferior -> superior order), for sequence models; batch
  with :func:`pad_collate`.

Images come out as float32 in [0, 1] (the cache's windows, un-normalised) unless a ``normalization`` preset or
(mean, std) is given: slice models normalise themselves per their ``default_cfg``. Arrays are memory-mapped, so
datasets are cheap to create and safe to use from DataLoader worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ichd.constants import LABELS
from ichd.errors import InputError
from ichd.preprocessing.cache import Cache, open_cache
from ichd.preprocessing.normalize import preset

Transform = Callable[[np.ndarray], np.ndarray]


def _as_cache(cache: Cache | str | os.PathLike[str]) -> Cache:
    return cache if isinstance(cache, Cache) else open_cache(cache)


def _mean_std(normalization: str | tuple[Sequence[float], Sequence[float]] | None
              ) -> tuple[np.ndarray, np.ndarray] | None:
    if normalization is None or normalization == "none":
        return None
    mean, std = preset(normalization) if isinstance(normalization, str) else normalization
    return (np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1),
            np.asarray(std, dtype=np.float32).reshape(-1, 1, 1))


def _targets(labels: pd.DataFrame | None, slice_ids: Sequence[str]) -> np.ndarray | None:
    if labels is None:
        return None
    missing = [c for c in LABELS if c not in labels.columns]
    if missing:
        raise InputError(f"the label table lacks column(s) {missing}")
    absent = [s for s in slice_ids if s not in labels.index]
    if absent:
        raise InputError(f"{len(absent)} slice(s) have no labels, e.g. {absent[0]!r}",
                         hint="pass labels covering every slice (ichd.data.labels.read_labels)")
    # NaN cells are missing labels of a labelled slice: kept, and masked by the loss and the metrics.
    return labels.reindex(list(slice_ids))[list(LABELS)].to_numpy(dtype=np.float32)


def _to_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    return x.astype(np.float32)


class SliceDataset:
    """One item per slice: ``{"image": (C, S, S) float32 tensor, "target": (6,) float32, "slice_id": str}``,
    plus ``"mask"`` (1, S, S) float32 and ``"has_mask"`` (bool) when ``masks`` are given.

    Args:
        cache: a :class:`~ichd.preprocessing.cache.Cache` or its folder.
        slice_ids: slices to serve, in order (default: every slice of the cache).
        labels: label table indexed by ``slice_id`` (:func:`ichd.data.labels.read_labels`); without it items have
            no ``"target"``. Missing labels (``NaN``) stay ``NaN`` in the target (masked by the loss).
        transform: callable on the float32 ``(C, S, S)`` [0, 1] numpy image (e.g.
            :func:`ichd.data.augment.train_augmentation`), applied before normalisation; a transform with
            ``accepts_uint8 = True`` gets the raw uint8 slice (0..255) of a uint8 cache instead, and must return
            float32 in [0, 1].
        normalization: ``None``/``"none"`` (keep [0, 1]), a preset name (``"seed"``, ``"half"``) or
            ``(mean, std)``.
        masks: ``slice_id -> (S, S)`` hemorrhage masks (:func:`ichd.data.masks.read_mask_folders`); slices
            without one get an all-zero mask and ``has_mask`` False (leave them out of a mask loss). With a
            ``transform``, it must offer ``augment_with_mask(image, mask)`` so both move together.
    """

    def __init__(self, cache: Cache | str | os.PathLike[str], slice_ids: Sequence[str] | None = None,
                 labels: pd.DataFrame | None = None, transform: Transform | None = None,
                 normalization: str | tuple[Sequence[float], Sequence[float]] | None = None,
                 masks: Mapping[str, np.ndarray] | None = None) -> None:
        self.cache = _as_cache(cache)
        table = self.cache.slices
        self.slice_ids = list(table.index) if slice_ids is None else [str(s) for s in slice_ids]
        unknown = [s for s in self.slice_ids if s not in table.index]
        if unknown:
            raise InputError(f"{len(unknown)} slice id(s) are not in the cache at {str(self.cache.root)!r}, "
                             f"e.g. {unknown[0]!r}", hint="build the cache from the same data as the labels")
        rows = table.loc[self.slice_ids]
        self._scan = rows["scan_id"].astype(str).to_numpy()
        self._index = rows["slice_index"].astype(np.int64).to_numpy()
        self.targets = _targets(labels, self.slice_ids)
        self.transform = transform
        self._norm = _mean_std(normalization)
        self.masks = masks
        if masks is not None:
            size = int(self.cache.image_size)
            bad = [k for k in self.slice_ids if k in masks and masks[k].shape != (size, size)]
            if bad:
                raise InputError(f"mask of slice {bad[0]!r} is {masks[bad[0]].shape}, the cache's images are "
                                 f"{size} x {size}", hint="read the masks at the cache's image size")

    def __len__(self) -> int:
        return len(self.slice_ids)

    def image(self, i: int) -> np.ndarray:
        """Slice ``i`` as float32 ``(C, S, S)`` in [0, 1] before transforms."""
        return _to_float(np.asarray(self.cache.array(self._scan[i])[self._index[i]]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        raw = np.asarray(self.cache.array(self._scan[i])[self._index[i]])
        mask = None
        if self.masks is not None:
            given = self.masks.get(self.slice_ids[i])
            mask = given if given is not None else np.zeros(raw.shape[-2:], np.float32)
        if self.transform is not None and mask is not None:
            if not hasattr(self.transform, "augment_with_mask"):
                raise InputError(f"transform {type(self.transform).__name__} cannot augment masks",
                                 hint="use ichd.data.augment.train_augmentation (augment_with_mask)")
            src = raw if raw.dtype == np.uint8 and getattr(self.transform, "accepts_uint8", False) else _to_float(raw)
            img, mask = self.transform.augment_with_mask(src, mask)
            img = np.asarray(img, dtype=np.float32)
        elif self.transform is not None and raw.dtype == np.uint8 and getattr(self.transform, "accepts_uint8", False):
            img = np.asarray(self.transform(raw), dtype=np.float32)
        elif self.transform is not None:
            img = np.asarray(self.transform(_to_float(raw)), dtype=np.float32)
        else:
            img = _to_float(raw)
        if self._norm is not None:
            img = (img - self._norm[0]) / self._norm[1]
        item: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(img)),
                                "slice_id": self.slice_ids[i]}
        if self.targets is not None:
            item["target"] = torch.from_numpy(self.targets[i].copy())
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
            item["has_mask"] = torch.tensor(self.slice_ids[i] in self.masks)  # type: ignore[operator]
        return item


class ScanDataset:
    """One item per scan: ``{"image": (z, C, S, S) float32, "target": (z, 6) float32, "scan_id": str,
    "slice_ids": list[str]}``, slices ordered inferior -> superior.

    ``transform`` is applied to each slice (like :class:`SliceDataset`); ``labels`` must cover every slice of the
    chosen scans. Use :func:`pad_collate` to batch scans of different lengths.
    """

    def __init__(self, cache: Cache | str | os.PathLike[str], scan_ids: Sequence[str] | None = None,
                 labels: pd.DataFrame | None = None, transform: Transform | None = None,
                 normalization: str | tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        self.cache = _as_cache(cache)
        self.scan_ids = self.cache.scan_ids if scan_ids is None else [str(s) for s in scan_ids]
        unknown = [s for s in self.scan_ids if s not in self.cache]
        if unknown:
            raise InputError(f"{len(unknown)} scan id(s) are not in the cache at {str(self.cache.root)!r}, "
                             f"e.g. {unknown[0]!r}")
        self.slice_ids: list[list[str]] = []
        self.targets: list[np.ndarray] | None = [] if labels is not None else None
        for scan in self.scan_ids:
            ids = [str(s) for s in self.cache.scan_slices(scan)["slice_id"]]
            self.slice_ids.append(ids)
            if self.targets is not None:
                self.targets.append(_targets(labels, ids))  # type: ignore[arg-type]
        self.transform = transform
        self._norm = _mean_std(normalization)

    def __len__(self) -> int:
        return len(self.scan_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} scans")
        i = int(i) % len(self)
        vol = _to_float(np.asarray(self.cache.array(self.scan_ids[i])))
        if self.transform is not None:
            vol = np.stack([np.asarray(self.transform(s), dtype=np.float32) for s in vol])
        if self._norm is not None:
            vol = (vol - self._norm[0]) / self._norm[1]
        item: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(vol)),
                                "scan_id": self.scan_ids[i], "slice_ids": list(self.slice_ids[i])}
        if self.targets is not None:
            item["target"] = torch.from_numpy(self.targets[i].copy())
        return item


def pad_collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`ScanDataset` items of different lengths: pad ``image`` (B, Z, C, S, S) and ``target``
    (B, Z, 6) with zeros to the longest scan, and add ``mask`` (B, Z) bool (True = real slice) and ``length``."""
    import torch

    if not items:
        raise ValueError("pad_collate got an empty batch")
    lengths = [int(it["image"].shape[0]) for it in items]
    z = max(lengths)
    b = len(items)
    img = items[0]["image"].new_zeros((b, z, *items[0]["image"].shape[1:]))
    mask = torch.zeros((b, z), dtype=torch.bool)
    out: dict[str, Any] = {"scan_id": [it["scan_id"] for it in items],
                           "slice_ids": [it["slice_ids"] for it in items],
                           "length": torch.tensor(lengths, dtype=torch.long)}
    has_target = "target" in items[0]
    tgt = torch.zeros((b, z, items[0]["target"].shape[-1]), dtype=torch.float32) if has_target else None
    for j, it in enumerate(items):
        n = lengths[j]
        img[j, :n] = it["image"]
        mask[j, :n] = True
        if tgt is not None:
            tgt[j, :n] = it["target"]
    out["image"] = img
    out["mask"] = mask
    if tgt is not None:
        out["target"] = tgt
    return out
