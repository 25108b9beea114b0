"""From a CT series and a slice model to evidence maps for every positive finding.

:func:`explain_series` flags every (slice, class) whose probability (from the predictor) reaches the operating
threshold and computes the model's evidence map for each flagged pair (its lesion map when it has one, else a
Grad-CAM map of the slice CNN: :func:`ichd.explain.lesion.slice_explainer`). The CNN input comes from the
caller (``Predictor.model_inputs``), so there is one path from HU to model input. :func:`write_series_explanation` turns
the result into one overlay PNG per finding, one montage per scan and an ``explain.json`` index::

    OUT/<scan>/overlays/slice_<i:03d>_<class>.png
    OUT/<scan>/montage.png                (only when something was flagged)
    OUT/<scan>/explain.json               thresholds, model, and per finding: slice, class, p, file

Maps are kept at the model's input resolution and mapped back onto the original matrix (undoing the square
padding and the resize of the preprocessing) only when drawn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ichd.constants import LABEL_ABBREVIATIONS, LABELS
from ichd.errors import InputError
from ichd.explain.gradcam import class_index
from ichd.explain.lesion import slice_explainer
from ichd.utils.logging import get_logger
from ichd.utils.progress import progress

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ichd.types import CTSeries

log = get_logger(__name__)

#: Slices per Grad-CAM forward/backward pass (bounded memory on CPU).
DEFAULT_BATCH_SIZE = 8


@dataclass
class Finding:
    """One flagged (slice, class) with its map at the model's input resolution ((S, S), values in [0, 1])."""

    slice_index: int
    class_name: str
    probability: float
    threshold: float
    cam: np.ndarray


@dataclass
class SeriesExplanation:
    """Grad-CAM evidence for one series: per-slice probabilities and the flagged findings."""

    scan_id: str
    probabilities: np.ndarray  # (z, 6) in LABELS order
    thresholds: dict[str, float]
    classes: tuple[str, ...]
    method: str
    findings: list[Finding] = field(default_factory=list)

    def flagged_slices(self) -> list[int]:
        """Sorted indices of slices with at least one finding."""
        return sorted({f.slice_index for f in self.findings})


def map_to_image(cam: np.ndarray, shape: tuple[int, int], crop_box: Any = None) -> np.ndarray:
    """Map a (S, S) map of the model input back onto the original (H, W) matrix.

    The preprocessing centre-pads a non-square slice to a square of side max(H, W) (after cutting it to
    ``crop_box`` when the model crops to the head) and resizes it to S; this undoes both
    (:func:`ichd.explain.overlay.model_map_to_square`) and crops the padding away.
    """
    from ichd.explain.overlay import model_map_to_square

    h, w = int(shape[0]), int(shape[1])
    s = max(h, w)
    square = model_map_to_square(cam, (h, w), crop_box)
    top, left = (s - h) // 2, (s - w) // 2
    return np.ascontiguousarray(square[top:top + h, left:left + w])


def resolve_classes(classes: Sequence[str | int] | None) -> tuple[str, ...]:
    """Class names (LABELS order, no duplicates) from names/abbreviations/indices; None means all six."""
    if not classes:
        return LABELS
    idx = sorted({class_index(c) for c in classes})
    return tuple(LABELS[i] for i in idx)


ModelInputs = Callable[[int, int], "torch.Tensor"]


def explain_series(series: CTSeries, model: nn.Module, model_inputs: ModelInputs, probabilities: np.ndarray, *,
                   thresholds: Mapping[str, float], classes: Sequence[str | int] | None = None,
                   scan_id: str | None = None, method: str | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> SeriesExplanation:
    """Grad-CAM maps for every slice/class of ``series`` whose probability is at least its threshold.

    Args:
        series: the CT series (HU).
        model: the registered slice CNN that the maps explain (eval mode).
        model_inputs: ``(start, stop) -> (n, 3, S, S)`` tensor on the model's device: the CNN input of those
            slices, e.g. :meth:`ichd.inference.predictor.Predictor.model_inputs` bound to ``series`` (the one
            preprocessing path from HU to model input).
        probabilities: (z, 6) slice probabilities that decide what is flagged (the predictor's output).
        thresholds: label -> operating threshold; every class in ``classes`` needs one.
        classes: classes to explain (names, abbreviations or indices); default all six.
        scan_id: name of the scan in outputs; default the series' SeriesInstanceUID.
        method: ``"gradcam"``, ``"gradcam++"`` or ``"lesion"`` (:data:`ichd.explain.lesion.MAP_METHODS`); None:
            the model's own evidence map (:func:`ichd.explain.lesion.default_map_method`).
        batch_size: flagged slices per Grad-CAM pass.
    """
    import torch

    names = resolve_classes(classes)
    missing = [c for c in names if c not in thresholds]
    if missing:
        raise InputError(f"no operating threshold for {', '.join(missing)}")
    probs = np.asarray(probabilities, dtype=np.float32)
    if probs.shape != (series.n_slices, len(LABELS)):
        raise InputError(f"probabilities have shape {probs.shape}, expected ({series.n_slices}, {len(LABELS)})")
    flagged: dict[int, list[str]] = {}
    for i in range(series.n_slices):
        hits = [c for c in names if probs[i, LABELS.index(c)] >= float(thresholds[c])]
        if hits:
            flagged[i] = hits
    cam = slice_explainer(model, method)
    result = SeriesExplanation(scan_id=scan_id or series.series_instance_uid, probabilities=probs,
                               thresholds={c: float(thresholds[c]) for c in names}, classes=names,
                               method=cam.method)
    if not flagged:
        return result
    slices = sorted(flagged)
    for start in progress(range(0, len(slices), batch_size), desc=f"maps ({cam.method})", unit="batch"):
        batch = slices[start:start + batch_size]
        needed = sorted({c for i in batch for c in flagged[i]}, key=LABELS.index)
        xb = torch.cat([model_inputs(i, i + 1) for i in batch], dim=0)
        maps = cam.compute(xb, needed).maps  # (b, len(needed), S, S)
        for bi, i in enumerate(batch):
            for c in flagged[i]:
                result.findings.append(Finding(slice_index=i, class_name=c,
                                               probability=float(probs[i, LABELS.index(c)]),
                                               threshold=float(thresholds[c]),
                                               cam=maps[bi, needed.index(c)].copy()))
    log.info("%d findings on %d of %d slices", len(result.findings), len(slices), series.n_slices)
    return result


def _tile_label(slice_index: int, findings: list[Finding], shown: Finding) -> str:
    probs = " ".join(f"{LABEL_ABBREVIATIONS[f.class_name]} {f.probability:.2f}" for f in findings)
    return f"slice {slice_index}: {probs}\nmap: {LABEL_ABBREVIATIONS[shown.class_name]}"


def map_summary(source_map: np.ndarray) -> dict[str, Any]:
    """A map at source resolution as data: its peak (row, column) and value there, and its energy (sum)."""
    m = np.asarray(source_map, dtype=np.float64)
    if m.size == 0 or not np.isfinite(m).all() or m.max() <= 0:
        return {"map_peak": None, "map_peak_value": 0.0, "map_energy": 0.0}
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    return {"map_peak": [int(r), int(c)], "map_peak_value": round(float(m[r, c]), 6),
            "map_energy": round(float(m.sum()), 3)}


def _tile_finding(findings: list[Finding]) -> Finding:
    """The finding whose map a montage tile shows: the most probable subtype, else 'any'."""
    subtypes = [f for f in findings if f.class_name != "any"]
    return max(subtypes or findings, key=lambda f: f.probability)


def write_series_explanation(series: CTSeries, expl: SeriesExplanation, out_dir: str | Path, *,
                             model_info: Mapping[str, Any] | None = None,
                             window: tuple[float, float] | None = None, dpi: int = 100,
                             crop_box: Any = None, call: Mapping[str, Any] | None = None,
                             save_maps: bool = False) -> dict[str, Any]:
    """Write the overlay PNGs, the montage and ``explain.json`` of one series; returns the index dict.

    Every file is written atomically. ``window`` is the display window (default the brain window L40/W80);
    ``crop_box``: the crop of the model input (``Predictor.crop_box``), None when the model saw whole slices.
    Overlays are kept to the head (:func:`ichd.explain.overlay.head_masked_map`). ``call``: what the predictor
    said of the scan (``scan_call``, ``not_assessable_reason``, ``skipped_slices``, ``warnings``), added to the
    index.

    Maps as data: every finding records the peak of its (head-masked) map in source-pixel coordinates
    (``map_peak``: row, column of the input slice), the map's value there (1 unless the head mask cut the peak)
    and its ``map_energy`` (the sum of the [0, 1] map over the slice, so that a user's own mask or box gives the
    fraction of the energy inside it). With ``save_maps`` the map itself is written at source resolution as
    ``maps/slice_<i>_<class>.npy`` (float32, rows x columns of the input slice).
    """
    from ichd.explain.lesion import MAP_DESCRIPTIONS, MAP_NAMES
    from ichd.explain.montage import MontageTile, montage_figure
    from ichd.explain.overlay import BRAIN_WINDOW, class_title, head_masked_map, overlay_figure, save_figure
    from ichd.preprocessing.cache import safe_file_stem
    from ichd.utils.files import atomic_path, atomic_write_text

    window = window or BRAIN_WINDOW
    root = Path(out_dir) / safe_file_stem(expl.scan_id)
    shape = tuple(series.hu.shape[1:])
    sp = (float(series.spacing_mm[1]), float(series.spacing_mm[2]))
    spacing = sp if all(np.isfinite(sp)) and min(sp) > 0 else None
    entries: list[dict[str, Any]] = []
    by_slice: dict[int, list[Finding]] = {}
    for f in progress(expl.findings, desc="overlays", unit="png"):
        by_slice.setdefault(f.slice_index, []).append(f)
        rel = f"overlays/slice_{f.slice_index:03d}_{f.class_name}.png"
        source_map = map_to_image(f.cam, shape, crop_box)
        fig = overlay_figure(series.hu[f.slice_index], source_map,
                             class_name=f.class_name, probability=f.probability, threshold=f.threshold,
                             slice_index=f.slice_index, subtitle=f"{expl.method}; slice 0 = most inferior",
                             map_name=MAP_NAMES.get(expl.method, expl.method),
                             window=window, dpi=dpi, pixel_spacing=spacing)
        save_figure(fig, root / rel)
        shown = head_masked_map(source_map, series.hu[f.slice_index], spacing)
        entry = {"slice_index": f.slice_index, "sop_instance_uid": series.sop_instance_uids[f.slice_index],
                 "class": f.class_name, "probability": round(f.probability, 6),
                 "threshold": f.threshold, "overlay": rel, **map_summary(shown)}
        if save_maps:
            entry["map_file"] = f"maps/slice_{f.slice_index:03d}_{f.class_name}.npy"
            (root / "maps").mkdir(parents=True, exist_ok=True)
            with atomic_path(root / entry["map_file"]) as tmp, open(tmp, "wb") as fh:
                np.save(fh, shown.astype(np.float32))
        entries.append(entry)
    montage_rel = None
    if by_slice:
        tiles = []
        for i in sorted(by_slice):
            shown = _tile_finding(by_slice[i])
            tiles.append(MontageTile(series.hu[i], map_to_image(shown.cam, shape, crop_box),
                                     _tile_label(i, by_slice[i], shown), pixel_spacing=spacing))
        flagged_names = sorted({f.class_name for f in expl.findings}, key=LABELS.index)
        title = (f"{len(by_slice)} of {series.n_slices} slices flagged — "
                 + ", ".join(class_title(c, None) for c in flagged_names))
        montage_rel = "montage.png"
        save_figure(montage_figure(tiles, title=title, window=window, dpi=dpi,
                                   map_name=MAP_NAMES.get(expl.method, expl.method)), root / montage_rel)
    index = {
        "scan_id": expl.scan_id,
        "n_slices": int(series.n_slices),
        "method": expl.method,
        "map": MAP_DESCRIPTIONS.get(expl.method, expl.method),
        "classes": list(expl.classes),
        "thresholds": expl.thresholds,
        "model": dict(model_info or {}),
        "flagged_slices": expl.flagged_slices(),
        "montage": montage_rel,
        "findings": entries,
        "slice_probabilities": [[round(float(v), 6) for v in row] for row in expl.probabilities],
        "labels": list(LABELS),
        **dict(call or {}),
    }
    atomic_write_text(root / "explain.json", json.dumps(index, indent=2, allow_nan=False))
    return index


class ExplainPredictor(Protocol):
    """What :func:`explain_to_folder` needs from a predictor (:class:`ichd.inference.predictor.Predictor`)."""

    cnn: nn.Module
    thresholds: dict[str, float]

    def model_inputs(self, series: CTSeries, start: int = 0, stop: int | None = None) -> torch.Tensor: ...

    def predict_series(self, series: CTSeries, *, allow_contrast: bool = False) -> Any: ...


def explain_to_folder(all_series: Sequence[CTSeries], predictor: ExplainPredictor, out: str | Path, *,
                      classes: Sequence[str | int] | None = None, method: str | None = None,
                      threshold: float | None = None, overwrite: bool = False,
                      model_info: Mapping[str, Any] | None = None,
                      batch_size: int = DEFAULT_BATCH_SIZE, allow_contrast: bool = False,
                      save_maps: bool = False) -> list[dict[str, Any]]:
    """Predict, explain and write every series of ``all_series`` under ``out`` (one sub-folder per scan).

    The slice probabilities that decide what is flagged are the predictor's (``predict_series``; with a
    sequence stage these are its slice outputs), the thresholds are the predictor's operating thresholds unless
    ``threshold`` overrides them for every class, and the maps explain the predictor's slice CNN on exactly the
    input it sees. Existing results are not replaced unless ``overwrite``. Returns the per-scan index dicts.

    The input guards apply as in ``ichd predict`` (:mod:`ichd.inference.guards`): a scan the predictor calls not
    assessable (contrast unless ``allow_contrast``, a localizer, not a head, non-axial, extreme noise) gets no
    finding and no overlay; its ``explain.json`` says why (``scan_call``, ``not_assessable_reason``,
    ``warnings``) and keeps the probabilities. Slices without a head have P = 0, so they are never flagged.
    """
    from ichd.preprocessing.cache import safe_file_stem

    if threshold is not None and not 0.0 < threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")
    thresholds = dict(predictor.thresholds)
    if threshold is not None:
        thresholds = dict.fromkeys(LABELS, float(threshold))
    out = Path(out)
    stems = [safe_file_stem(s.series_instance_uid) for s in all_series]
    if len(set(stems)) != len(stems):
        raise InputError("two input series have the same SeriesInstanceUID; explain them one at a time")
    taken = [st for st in stems if (out / st / "explain.json").exists()]
    if taken and not overwrite:
        raise InputError(f"{out} already holds results for {len(taken)} of these series (e.g. {taken[0]})",
                         hint="choose another --out folder, or pass --overwrite to replace them")
    indexes = []
    for series in all_series:
        pred = predictor.predict_series(series, allow_contrast=allow_contrast)
        reason = getattr(pred, "not_assessable", None)
        probs = np.asarray(pred.slice_probs)
        expl = explain_series(
            series, predictor.cnn, lambda a, b, s=series: predictor.model_inputs(s, a, b),
            np.zeros_like(probs) if reason else probs, thresholds=thresholds, classes=classes, method=method,
            batch_size=batch_size)
        expl.probabilities = probs  # the index keeps the model's probabilities, also when nothing is explained
        call: dict[str, Any] = {"scan_call": getattr(pred, "scan_call", None)}
        if reason:
            call["not_assessable_reason"] = reason
        call["skipped_slices"] = list(getattr(pred, "skipped_slices", []))
        call["warnings"] = [w.to_dict() for w in getattr(pred, "warnings", [])]
        crop = predictor.crop_box(series) if hasattr(predictor, "crop_box") else None
        indexes.append(write_series_explanation(series, expl, out, model_info=model_info, crop_box=crop,
                                                call=call, save_maps=save_maps))
    return indexes
