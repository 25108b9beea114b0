"""Positive/negative calls from probabilities and thresholds: the one place the call rule lives.

The rule (used by ``ichd predict``'s JSON, HTML and DICOM SR results, the service's summaries and
``ichd evaluate``'s sensitivity/specificity):

* a label is called positive when its probability is at or above its threshold (``p >= t``; a ``nan`` threshold
  never calls);
* **subtype consistency**: a subtype (every label but ``any``) is called positive only when ``any`` is called
  positive too. A subtype probability over its threshold while ``any`` is negative is *not* a call.

Probabilities are never changed; only the calls are gated.

The **scan call** (:func:`scan_call`) has three states: ``"positive"`` (``any`` called), ``"negative"`` and
``"not_assessable"``: a series the model must not be trusted on (a contrast-enhanced series, found by
:mod:`ichd.inference.guards`), whatever its probabilities; then no label is called (:func:`reported_calls` gives
``None`` for each). This module sits with the shared foundation
(:mod:`ichd.types` uses it), so it imports nothing but numpy and :mod:`ichd.constants`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ichd.constants import LABELS

#: The label that gates the subtype calls.
GATE_LABEL = "any"
#: The rule in words (reports and result files quote it).
CALL_RULE = "a label is positive when its probability >= its threshold; a subtype only when \"any\" is positive too"


def threshold_vector(thresholds: Mapping[str, float] | Sequence[float] | np.ndarray,
                     labels: Sequence[str] = LABELS) -> np.ndarray:
    """Thresholds as a float array in ``labels`` order (``None`` -> ``nan``)."""
    if isinstance(thresholds, Mapping):
        values = [thresholds[lab] for lab in labels]
    else:
        values = list(thresholds)
        if len(values) != len(labels):
            raise ValueError(f"{len(values)} thresholds for {len(labels)} labels")
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def calls(probs: Any, thresholds: Mapping[str, float] | Sequence[float] | np.ndarray,
          labels: Sequence[str] = LABELS) -> np.ndarray:
    """Boolean calls of ``probs`` (shape ``(..., C)``, columns in ``labels`` order) under the rule above.

    Without a ``GATE_LABEL`` column in ``labels`` the calls are ungated.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[-1] != len(labels):
        raise ValueError(f"probabilities have {p.shape[-1]} columns for {len(labels)} labels")
    t = threshold_vector(thresholds, labels)
    with np.errstate(invalid="ignore"):
        out = p >= t  # nan thresholds compare False: never called
    if GATE_LABEL in labels:
        g = list(labels).index(GATE_LABEL)
        gate = out[..., g:g + 1]
        out = out & gate  # the gate column stays itself (x & x = x)
    return out


def call_dict(probs: Any, thresholds: Mapping[str, float], labels: Sequence[str] = LABELS) -> dict[str, bool]:
    """:func:`calls` of one probability vector (shape ``(C,)``) as ``{label: bool}``."""
    row = calls(np.asarray(probs, dtype=np.float64).reshape(-1), thresholds, labels)
    return {lab: bool(row[i]) for i, lab in enumerate(labels)}


def gated_subtypes(probs: Any, thresholds: Mapping[str, float], labels: Sequence[str] = LABELS) -> list[str]:
    """Subtypes whose probability reaches their threshold but that are not called because ``any`` is negative
    (for reports that explain the rule)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    t = threshold_vector(thresholds, labels)
    called = call_dict(p, thresholds, labels)
    with np.errstate(invalid="ignore"):
        over = p >= t
    return [lab for i, lab in enumerate(labels) if lab != GATE_LABEL and bool(over[i]) and not called[lab]]


#: The three states of a scan call.
POSITIVE, NEGATIVE, NOT_ASSESSABLE = "positive", "negative", "not_assessable"
SCAN_CALLS: tuple[str, ...] = (POSITIVE, NEGATIVE, NOT_ASSESSABLE)


def scan_call(probs: Any, thresholds: Mapping[str, float], labels: Sequence[str] = LABELS, *,
              not_assessable: str | None = None) -> str:
    """``"not_assessable"`` when ``not_assessable`` gives a reason, else ``"positive"`` / ``"negative"`` from the
    gate label's call (:func:`call_dict`)."""
    if not_assessable:
        return NOT_ASSESSABLE
    return POSITIVE if call_dict(probs, thresholds, labels).get(GATE_LABEL, False) else NEGATIVE


def reported_calls(probs: Any, thresholds: Mapping[str, float], labels: Sequence[str] = LABELS, *,
                   not_assessable: str | None = None) -> dict[str, bool | None]:
    """The per-label calls results report: :func:`call_dict`, or ``None`` for every label of a not-assessable
    scan."""
    if not_assessable:
        return dict.fromkeys(labels)
    return dict(call_dict(probs, thresholds, labels))
