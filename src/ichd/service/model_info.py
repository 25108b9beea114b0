"""What ``GET /v1/model`` answers: the loaded model's identity, thresholds and model card.

:func:`describe_model` reads it from a loaded :class:`~ichd.inference.predictor.Predictor`: a bundle gives its
manifest facts and ``model_card.md``; a checkpoint gives its identity only (it has no card).
"""

from __future__ import annotations

from typing import Any

#: Manifest facts of a bundle copied into the description (all short text).
BUNDLE_FIELDS: tuple[str, ...] = ("description", "intended_use", "training_data", "license")


def describe_model(predictor: Any) -> dict[str, Any]:
    """The model facts of ``predictor`` as plain JSON-able data (no file system paths).

    Keys: ``name``, ``version``, ``sha256``, ``source`` (``bundle`` or ``checkpoint``), ``scan_rule``,
    ``thresholds`` (per label), ``sequence_stage`` (bool), ``evidence_map`` (``method``, ``name`` and
    ``description`` of the heat maps the viewer overlays: the model's lesion map, or Grad-CAM), the bundle's
    :data:`BUNDLE_FIELDS` (empty strings for a checkpoint), ``threshold_policy`` (per label, may be empty) and
    ``model_card`` (Markdown; empty when there is none).
    """
    from ichd.explain.lesion import MAP_DESCRIPTIONS, MAP_NAMES, default_map_method

    ident = predictor.identity
    info: dict[str, Any] = {
        "name": ident.name,
        "version": ident.version,
        "sha256": ident.sha256,
        "source": ident.source,
        "scan_rule": predictor.scan_rule,
        "thresholds": dict(predictor.thresholds),
        "sequence_stage": predictor.sequence is not None,
    }
    method = default_map_method(predictor.cnn)
    info["evidence_map"] = {"method": method, "name": MAP_NAMES[method], "description": MAP_DESCRIPTIONS[method]}
    bundle = predictor.bundle
    manifest: dict[str, Any] = bundle.manifest if bundle is not None else {}
    for key in BUNDLE_FIELDS:
        info[key] = str(manifest.get(key) or "")
    policy = manifest.get("threshold_policy")
    info["threshold_policy"] = {str(k): str(v) for k, v in policy.items()} if isinstance(policy, dict) else {}
    info["model_card"] = bundle.model_card() if bundle is not None else ""
    return info
