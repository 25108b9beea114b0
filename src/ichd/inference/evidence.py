"""Evidence for a prediction: which slices to show, and their Grad-CAM heat maps.

A slice is *flagged* when it is the most probable slice of a subtype that is positive at scan level, or, to fill
the remaining places, one of the slices whose "any" probability reaches the "any" threshold (highest first).
Flagged slices get a Grad-CAM map of the slice CNN for that subtype (the sequence stage has no spatial map: the
heat map always explains the CNN's view of the slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ichd.types import Prediction

#: How many slices the reports show at most.
DEFAULT_MAX_FLAGGED = 6


@dataclass
class SliceEvidence:
    """One flagged slice.

    Attributes:
        index: slice index (0 = most inferior).
        label: the subtype the slice is flagged for (and the class the heat map explains).
        probability: the slice's probability for ``label``.
        image_hu: the slice in HU, padded to a square like the model input (for display).
        cam: the evidence map (the model's lesion map, else Grad-CAM; ``map_method``) float32 in [0, 1] on the grid of ``image_hu`` (the model-input map resized, any crop to
            the head undone: :meth:`ichd.inference.predictor.Predictor.map_to_display`), or None when not
            computed. Overlays keep it to the head (:func:`ichd.explain.overlay.head_masked_map`).
        pixel_spacing: (row, col) mm of the slice, or None when unknown (for the head mask of the overlays).
    """

    index: int
    label: str
    probability: float
    image_hu: np.ndarray = field(repr=False)
    cam: np.ndarray | None = field(default=None, repr=False)
    pixel_spacing: tuple[float, float] | None = None
    #: what ``cam`` is: ``"lesion"`` (the model's lesion map) or ``"gradcam"`` (see :mod:`ichd.explain.lesion`)
    map_method: str | None = None


@dataclass
class ExplainedPrediction(Prediction):
    """A :class:`~ichd.types.Prediction` with the evidence of its flagged slices (``gradcam=True``)."""

    evidence: list[SliceEvidence] = field(default_factory=list)


def select_flagged(pred: Prediction, max_slices: int = DEFAULT_MAX_FLAGGED, *,
                   at_least_one: bool = False) -> list[tuple[int, str, float]]:
    """``(slice index, label, probability)`` of the slices to show, at most ``max_slices``, in slice order.

    First, for every subtype positive at scan level (most probable subtype first), its most probable slice; then
    slices with ``any`` at or above the ``any`` threshold, highest first. A slice appears once (for a series read
    as slabs, only the middle slice of each slab is a candidate). Nothing is
    flagged when no slice reaches the ``any`` threshold and no subtype is positive, unless ``at_least_one``:
    then the slice with the highest ``any`` probability is returned (for outputs that must show one slice).
    """
    labels = list(pred.labels)
    probs = np.asarray(pred.slice_probs, dtype=np.float64)
    if pred.slabs:  # the slices of a slab share its probabilities: show each slab once, by its middle slice
        shown = np.full(len(probs), -1.0)
        middle = [int(sl["source_slices"][(len(sl["source_slices"]) - 1) // 2]) for sl in pred.slabs]
        shown[middle] = 0.0
        probs = np.where(shown[:, None] < 0, -1.0, probs)
    chosen: dict[int, tuple[str, float]] = {}
    positive = pred.scan_positive
    subtypes = [lab for lab in labels if lab != "any" and positive[lab]]
    subtypes.sort(key=lambda lab: -float(pred.scan_probs[labels.index(lab)]))
    for lab in subtypes:
        if len(chosen) >= max_slices:
            break
        j = labels.index(lab)
        i = int(np.argmax(probs[:, j]))
        if i not in chosen:
            chosen[i] = (lab, float(probs[i, j]))
    j_any = labels.index("any")
    for i in np.argsort(-probs[:, j_any], kind="stable"):
        if len(chosen) >= max_slices:
            break
        p = float(probs[i, j_any])
        if p < pred.thresholds["any"]:
            break
        chosen.setdefault(int(i), ("any", p))
    if at_least_one and not chosen and max_slices > 0:
        i = int(np.argmax(probs[:, j_any]))
        chosen[i] = ("any", float(probs[i, j_any]))
    return [(i, lab, p) for i, (lab, p) in sorted(chosen.items())]
