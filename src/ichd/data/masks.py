"""Hemorrhage segmentation masks for mask-supervised training (RADnet's auxiliary segmentation loss).

A mask folder holds ``labels.csv`` with a ``mask`` column (PNG path relative to the folder, hemorrhage = any
value > 0) and the slice each mask belongs to, either

* ``slice_id``: an ichd slice id; the mask is in the orientation of that slice as ichd reads it; or
* ``patient`` + ``ctich_slice`` (the ``hu-slices`` layout of the shared data): the CT-ICH slice
  ``ctich-<ppp>-<sss>``; those masks are stored rotated 90 degrees clockwise against the CT-ICH JPGs, so they are
  turned back with ``numpy.rot90(mask, 1)`` (see the data README, section 3).

Masks are padded to a square like the images and resized to the cache's side with area averaging, so each pixel
holds the hemorrhage fraction of its area (a soft target in [0, 1]).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ichd.errors import InputError


def _slice_ids(df, table: Path) -> list[str]:  # df: pandas.DataFrame
    from ichd.io.images import ctich_slice_id

    if "slice_id" in df.columns:
        return [str(s) for s in df["slice_id"]]
    if {"patient", "ctich_slice"} <= set(df.columns):
        return [ctich_slice_id(int(p), int(s)) for p, s in zip(df["patient"], df["ctich_slice"])]
    raise InputError(f"{table} needs a slice_id column or patient + ctich_slice columns (hu-slices layout)",
                     hint="see ichd.data.masks for the mask folder layout")


def read_masks(folder: str | os.PathLike[str], image_size: int) -> dict[str, np.ndarray]:
    """``slice_id -> (image_size, image_size) float32`` hemorrhage fraction per pixel, for one mask folder."""
    import pandas as pd
    from PIL import Image

    from ichd.preprocessing.resize import resize_slices

    root = Path(folder)
    table = root / "labels.csv"
    if not table.is_file():
        raise InputError(f"mask folder {str(root)!r} has no labels.csv",
                         hint="point data.masks at a folder like $ICHD_DATA/hu-slices")
    df = pd.read_csv(table)
    if "mask" not in df.columns:
        raise InputError(f"{table} has no mask column", hint="one row per mask: mask (PNG path) and its slice")
    ids = _slice_ids(df, table)
    rotate = "slice_id" not in df.columns  # hu-slices layout: stored rotated against the CT-ICH JPGs
    out: dict[str, np.ndarray] = {}
    for slice_id, rel in zip(ids, df["mask"].astype(str)):
        path = root / rel
        try:
            with Image.open(path) as im:
                mask = np.asarray(im.convert("L")) > 0
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read mask {str(path)!r}: {e}") from e
        if rotate:
            mask = np.rot90(mask, 1)
        if slice_id in out:
            raise InputError(f"{table}: two masks for slice {slice_id!r}")
        out[slice_id] = resize_slices(mask.astype(np.float32)[None], image_size, mode="area")[0]
    return out


def read_mask_folders(folders: Iterable[str | os.PathLike[str]], image_size: int) -> dict[str, np.ndarray]:
    """:func:`read_masks` of several folders in one table; a slice with masks in two folders is an error."""
    out: dict[str, np.ndarray] = {}
    for folder in folders:
        part = read_masks(folder, image_size)
        twice = sorted(set(part) & set(out))
        if twice:
            raise InputError(f"slice {twice[0]!r} has a mask in more than one mask folder ({folder})")
        out.update(part)
    return out
