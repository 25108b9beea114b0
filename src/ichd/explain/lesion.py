"""The evidence map of a slice model: its lesion map when it has one, Grad-CAM otherwise.

A frozen-encoder model with a lesion head (:class:`~ichd.models.frozen.LesionMapHead`, trained on hemorrhage
masks by ``ichd train lesion-map``) says ``default_cfg["evidence_map"] == "lesion"``; its map is the per-pixel
hemorrhage probability on the head's grid, upsampled to the input and scaled to [0, 1] by its maximum like a
Grad-CAM map. The masks do not separate subtypes, so it is **the same map for every class**: it shows where the
blood is, and the class probabilities say which kind. Measured against Grad-CAM on the 26 masked slices in
docs/results.md (issue 22). :func:`slice_explainer` is the one place that picks the map of a model, for
``ichd explain``, the reports and the viewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ichd.errors import InputError, ModelError, did_you_mean
from ichd.explain.gradcam import _EPS, METHODS, CamResult, GradCAM, class_index

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Every evidence map ``ichd explain --method`` can draw.
MAP_METHODS: tuple[str, ...] = (*METHODS, "lesion")

#: What each map is, in a sentence for reports and ``explain.json``.
MAP_DESCRIPTIONS: dict[str, str] = {
    "gradcam": ("Grad-CAM of the slice model's score for the class: where its features raise that score; "
                "not a segmentation"),
    "gradcam++": ("Grad-CAM++ of the slice model's score for the class: where its features raise that score; "
                  "not a segmentation"),
    "lesion": ("lesion map: the per-pixel hemorrhage probability of a head trained on hemorrhage masks, the "
               "same map for every subtype (the class comes from the slice probabilities); not a volume"),
}


#: Short names of the maps for figure titles and colour bars.
MAP_NAMES: dict[str, str] = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "lesion": "Lesion map"}


class LesionMap:
    """The lesion map of a model with a lesion head, with :class:`~ichd.explain.gradcam.GradCAM`'s interface
    (``__call__``, ``compute``); every class gets the same map."""

    method = "lesion"

    def __init__(self, model: nn.Module) -> None:
        if getattr(model, "lesion_head", None) is None:
            raise ModelError(f"model {type(model).__name__} has no lesion map head",
                             hint="use --method gradcam, or a model trained with `ichd train lesion-map`")
        self.model = model

    def __call__(self, x: torch.Tensor, class_idx: int | str, *,
                 output_size: tuple[int, int] | None = None) -> np.ndarray:
        return self.compute(x, [class_idx], output_size=output_size).maps[:, 0]

    def compute(self, x: torch.Tensor, classes: Sequence[int | str], *,
                output_size: tuple[int, int] | None = None) -> CamResult:
        import torch
        import torch.nn.functional as F

        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise InputError(f"map input must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if len(classes) == 0:
            raise InputError("no classes given for the map")
        model: Any = self.model
        size = tuple(output_size) if output_size is not None else tuple(x.shape[-2:])
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                logits = model(x)
                prob = model.lesion_probabilities(x)[:, None]  # (B, 1, G, G)
        finally:
            model.train(was_training)
        up = F.interpolate(prob, size=size, mode="bilinear", align_corners=False).clamp_min_(0.0)
        peak = up.flatten(2).amax(dim=2)[..., None, None]
        maps = torch.where(peak > _EPS, up / peak.clamp_min(_EPS), torch.zeros_like(up))
        idx = tuple(class_index(c, logits.shape[1]) for c in classes)
        n = len(idx)
        return CamResult(maps=maps.repeat(1, n, 1, 1).cpu().numpy().astype(np.float32),
                         raw=prob.repeat(1, n, 1, 1).cpu().numpy().astype(np.float32),
                         logits=logits.float().cpu().numpy(), classes=idx)


def default_map_method(model: nn.Module) -> str:
    """The model's own evidence map: ``"lesion"`` when it has a lesion head, else ``"gradcam"``."""
    cfg = getattr(model, "default_cfg", None) or {}
    method = cfg.get("evidence_map", "gradcam") if isinstance(cfg, dict) else "gradcam"
    return "lesion" if method == "lesion" and getattr(model, "lesion_head", None) is not None else "gradcam"


def slice_explainer(model: nn.Module, method: str | None = None) -> GradCAM | LesionMap:
    """The map maker for ``model``: ``method`` (one of :data:`MAP_METHODS`), or the model's own
    (:func:`default_map_method`) when None."""
    chosen = default_map_method(model) if method is None else method
    if chosen not in MAP_METHODS:
        raise InputError(f"unknown map method {chosen!r}", hint=did_you_mean(str(chosen), MAP_METHODS))
    if chosen == "lesion":
        return LesionMap(model)
    return GradCAM(model, method=chosen)  # type: ignore[arg-type]
