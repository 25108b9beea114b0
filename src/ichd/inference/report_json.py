"""The versioned JSON result of ``ichd predict`` and its JSON Schema.

One :class:`~ichd.types.Prediction` becomes one JSON object (layout: ``resources/schemas/prediction-v2.schema.json``,
``schema_version`` "2.1"); several series of one input become an array of such objects. Consumers should check
``schema_version``; a breaking change of the layout gets a new schema file and version. Version 2 (version 1:
``prediction-v1.schema.json``) added ``scan_call`` (positive / negative / not_assessable, with
``not_assessable_reason``), ``null`` calls in ``scan_positive`` for a not-assessable scan, ``skipped_slices``
(slices without head tissue), ``guards`` and ``provenance``. Version 2.1 (same schema file; "2.0" results stay
valid) adds the optional ``second_reader`` block: BLAST-CT's lesion volumes (``ichd predict --second-reader
blast-ct``, :mod:`ichd.inference.second_reader`), and the out-of-domain guards (:mod:`ichd.inference.guards`):
``not_assessable_reason`` ``localizer`` / ``not_head`` / ``non_axial`` / ``extreme_noise`` beside
``contrast_enhanced``, and ``guards.domain`` (their measures and the warning codes raised); and ``slabs`` (a
thin-slice series read as ~5 mm slabs: each slab's source slices).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from ichd import __version__
from ichd.errors import ModelError
from ichd.paths import package_resource
from ichd.types import Prediction

#: Version written into every result (``schema_version``) and the schema file that describes it.
SCHEMA_VERSION = "2.1"
SCHEMA_FILE = "prediction-v2.schema.json"


def schema_path():
    """Path of the JSON Schema file shipped in the package."""
    return package_resource("resources", "schemas", SCHEMA_FILE)


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a prediction result."""
    return json.loads(schema_path().read_text(encoding="utf-8"))


def _prob(x: float) -> float:
    """A probability as a JSON number rounded to 6 decimals (plenty for reports; keeps files small)."""
    return round(float(x), 6)


def _z(value: float) -> float | None:
    return None if not math.isfinite(float(value)) else round(float(value), 4)


def prediction_to_dict(pred: Prediction, *, flagged: Sequence[tuple[int, str, float]] = (),
                       input_kind: str | None = None, generated_uids: bool | None = None,
                       demo: Mapping[str, Any] | None = None,
                       source_files: Sequence[str] | None = None,
                       second_reader: Mapping[str, Any] | None = None,
                       display_orientation: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON-able result for one series.

    Args:
        pred: the prediction.
        flagged: ``(slice index, label, probability)`` of the slices shown as evidence (Grad-CAM).
        input_kind: ``CTSeries.source_kind`` ("dicom", "nifti", "images", "ctich").
        generated_uids: True when ichd generated the study/series UIDs (non-DICOM input).
        demo: for the bundled demo study, the ``demo`` block (:func:`ichd.inference.demo.demo_block`: ``is_demo``,
            ``in_training_data`` true/false/null, ``note``); left out of the result for any other input.
        source_files: per-slice source file relative to the input (``CTSeries.source_files``), written as
            ``slices[].source_file``; left out when ``None`` (e.g. NIfTI input).
        second_reader: the ``second_reader`` block (``SecondReading.to_dict()``, plus ``seg`` when a DICOM SEG
            was written); left out when ``None``.
        display_orientation: (row, column) patient direction letters of the slices as stored (from the DICOM
            ImageOrientationPatient, e.g. ``("L", "P")``: left to right is towards the patient's left), written as
            ``display_orientation`` for orientation markers; left out when unknown (non-DICOM input).
    """
    if source_files is not None and len(source_files) != pred.slice_probs.shape[0]:
        raise ValueError(f"{len(source_files)} source files for {pred.slice_probs.shape[0]} slices")
    labels = list(pred.labels)
    model: dict[str, Any] = {k: str(pred.model[k]) for k in ("name", "version", "sha256")}
    if "scan_rule" in pred.model:
        model["scan_rule"] = str(pred.model["scan_rule"])
    if "tta" in pred.model:
        model["tta"] = str(pred.model["tta"]).lower() in ("1", "true", "yes", "on")
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "ichd_version": __version__,
        "model": model,
    }
    if input_kind is not None:
        out["input_kind"] = input_kind
    if generated_uids is not None:
        out["generated_uids"] = bool(generated_uids)
    if demo is not None:
        trained = demo.get("in_training_data")
        out["demo"] = {"is_demo": bool(demo.get("is_demo", True)),
                       "in_training_data": None if trained is None else bool(trained),
                       "note": str(demo.get("note", ""))}
    out.update({
        "study_instance_uid": pred.study_instance_uid,
        "series_instance_uid": pred.series_instance_uid,
        "n_slices": int(pred.slice_probs.shape[0]),
        "labels": labels,
        "scan": {lab: _prob(pred.scan_probs[i]) for i, lab in enumerate(labels)},
        "scan_positive": pred.reported_calls,
        "scan_call": pred.scan_call,
    })
    if pred.not_assessable:
        out["not_assessable_reason"] = pred.not_assessable
    out.update({
        "thresholds": {lab: _prob(pred.thresholds[lab]) for lab in labels},
        "slices": [_slice_dict(pred, i, labels, source_files) for i in range(pred.slice_probs.shape[0])],
    })
    if flagged:
        out["flagged_slices"] = [{"index": int(i), "label": str(lab), "probability": _prob(p)}
                                 for i, lab, p in flagged]
    out["skipped_slices"] = [{"index": int(s["index"]), "reason": str(s["reason"])} for s in pred.skipped_slices]
    if pred.guards:
        out["guards"] = dict(pred.guards)
    if pred.provenance is not None:
        out["provenance"] = dict(pred.provenance)
    if pred.slabs:
        out["slabs"] = [dict(sl) for sl in pred.slabs]
    if display_orientation is not None:
        out["display_orientation"] = {"row": str(display_orientation[0]), "column": str(display_orientation[1])}
    if second_reader is not None:
        out["second_reader"] = dict(second_reader)
    out["warnings"] = [w.to_dict() for w in pred.warnings]
    out["timing_s"] = {k: round(float(v), 4) for k, v in pred.timing_s.items()}
    return out


def _slice_dict(pred: Prediction, i: int, labels: list[str], source_files: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": i, "sop_instance_uid": pred.sop_instance_uids[i], "z_mm": _z(pred.positions_mm[i])}
    if source_files is not None:
        out["source_file"] = str(source_files[i])
    out["probabilities"] = {lab: _prob(pred.slice_probs[i, j]) for j, lab in enumerate(labels)}
    return out


def validate_result(data: Any) -> None:
    """Check ``data`` (one result object or a list of them) against the schema.

    Raises :class:`ModelError` naming the first offending field: a result that fails its own schema is an ichd
    bug, never something a user can fix, so it must not be written.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ModelError(f"prediction result does not match {SCHEMA_FILE} at {where}: {err.message}")


def dumps(data: Any) -> str:
    """Serialise a result (object or list) as indented JSON text ending in a newline."""
    return json.dumps(data, indent=2, allow_nan=False) + "\n"
