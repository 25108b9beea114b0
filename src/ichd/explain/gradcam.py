"""Grad-CAM and Grad-CAM++ class-activation maps for the slice CNNs.

Grad-CAM (Selvaraju et al. 2017) weights the feature maps ``A_k`` of a convolutional layer by the spatially
averaged gradient of a class score ``S_c`` and keeps the positive part::

    L_c = ReLU( sum_k w_k A_k ),   w_k = mean_ij dS_c / dA_k[i, j]

Grad-CAM++ (Chattopadhay et al. 2018) replaces the plain mean by per-pixel weights ``alpha`` derived for an
exponential score ``exp(S_c)`` so that several separate instances of a class all show up::

    alpha_kij = g^2 / (2 g^2 + sum_ab A_k[a, b] g^3),   w_k = sum_ij alpha_kij ReLU(exp(S_c) g_kij)

with ``g = dS_c/dA_k[i, j]``. The score is the class *logit* (before the sigmoid), the usual choice for
multi-label heads because the sigmoid saturates.

The target layer comes from the model registry (``model.default_cfg["gradcam_layer"]``, a dotted module name
whose forward output is the last convolutional block's ``(B, K, h, w)`` feature map), so callers never name
layers. One forward hook is registered per call and always removed, also when the call fails; gradients are
taken with :func:`torch.autograd.grad`, so the model's ``.grad`` buffers are never touched.

Maps are upsampled bilinearly to the input size (or ``output_size``) and scaled to [0, 1] by their maximum.
A map without positive evidence (e.g. a class whose score does not depend on the layer, zero gradient) is
returned as all zeros, never NaN.

Why not ``monai.visualize``: its Grad-CAM gives the same layer-resolution maps (the tests check equality), but it
leaves its hooks registered on the model; its Grad-CAM++ (MONAI 1.6) sums ``A * g^3`` over the map in the
denominator instead of the paper's ``sum(A) * g^3`` and fails on batches of more than one image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ichd.constants import LABELS
from ichd.errors import InputError, ModelError, did_you_mean

if TYPE_CHECKING:
    import torch
    from torch import nn

CamMethod = Literal["gradcam", "gradcam++"]
METHODS: tuple[str, ...] = ("gradcam", "gradcam++")

#: Maps whose maximum is below this (relative to float32 resolution) are treated as "no evidence" -> zeros.
_EPS = 1e-12


@dataclass
class CamResult:
    """Output of :meth:`GradCAM.compute`.

    Attributes:
        maps: (B, C, H, W) float32 in [0, 1], one map per requested class (in ``classes`` order).
        raw: (B, C, h, w) float32, the un-normalised, un-upsampled ReLU maps at the layer's resolution
            (useful for energy measures that must not depend on the max-scaling).
        logits: (B, num_classes) float32, the model's logits for the batch.
        classes: class indices, one per map channel.
    """

    maps: np.ndarray
    raw: np.ndarray
    logits: np.ndarray
    classes: tuple[int, ...]

    @property
    def probabilities(self) -> np.ndarray:
        """Sigmoid of :attr:`logits`, (B, num_classes)."""
        return (1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))).astype(np.float32)


def gradcam_layer_name(model: nn.Module) -> str:
    """The Grad-CAM target layer of a registered model, from ``model.default_cfg["gradcam_layer"]``.

    Raises :class:`ModelError` when the model does not declare one (it did not come from the registry).
    """
    cfg = getattr(model, "default_cfg", None)
    name: Any = None
    if isinstance(cfg, Mapping):
        name = cfg.get("gradcam_layer")
    elif cfg is not None:
        name = getattr(cfg, "gradcam_layer", None)
    if not name or not isinstance(name, str):
        raise ModelError(
            f"model {type(model).__name__} has no default_cfg['gradcam_layer']",
            hint="create slice models with ichd.models.create_model(...) or load them with load_checkpoint(...); "
            "registered models name their Grad-CAM layer",
        )
    return name


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (dotted path) of ``model``; :class:`ModelError` naming close matches if absent."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ModelError(
            f"Grad-CAM layer {name!r} not found in {type(model).__name__}", hint=did_you_mean(name, names)
        ) from None


def class_index(cls: int | str, num_classes: int = len(LABELS)) -> int:
    """Index of a class given as an index or a label name (``"subdural"``, or its abbreviation ``"SDH"``)."""
    from ichd.constants import LABEL_ABBREVIATIONS

    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        if not 0 <= int(cls) < num_classes:
            raise InputError(f"class index {cls} out of range 0..{num_classes - 1}")
        return int(cls)
    if isinstance(cls, str):
        key = cls.strip()
        for i, lab in enumerate(LABELS):
            if key.lower() == lab or key.upper() == LABEL_ABBREVIATIONS[lab]:
                return i
        raise InputError(f"unknown class {cls!r}", hint=did_you_mean(key.lower(), LABELS))
    raise InputError(f"class must be an index or a label name, got {type(cls).__name__}")


class GradCAM:
    """Grad-CAM / Grad-CAM++ on a registered slice model.

    Args:
        model: a slice CNN whose ``forward(x)`` returns logits ``(B, num_classes)``.
        layer: dotted name of the target layer; ``None`` (the normal case) takes it from the model registry's
            ``default_cfg["gradcam_layer"]``. Pass a name only for models that are not registered.
        method: ``"gradcam"`` or ``"gradcam++"``.

    Example::

        cam = GradCAM(model)
        maps = cam(x, "subdural")          # (B, H, W) float32 in [0, 1]
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, method: CamMethod = "gradcam") -> None:
        if method not in METHODS:
            raise InputError(f"unknown Grad-CAM method {method!r}", hint=did_you_mean(str(method), METHODS))
        self.model = model
        self.layer_name = layer if layer is not None else gradcam_layer_name(model)
        self.layer = resolve_layer(model, self.layer_name)
        self.method: CamMethod = method

    def __call__(self, x: torch.Tensor, class_idx: int | str, *,
                 output_size: tuple[int, int] | None = None) -> np.ndarray:
        """Maps for one class: (B, H, W) float32 in [0, 1] (H, W = ``output_size`` or the input's size)."""
        return self.compute(x, [class_idx], output_size=output_size).maps[:, 0]

    def compute(self, x: torch.Tensor, classes: Sequence[int | str], *,
                output_size: tuple[int, int] | None = None) -> CamResult:
        """Maps for several classes with one forward pass and one gradient pass per class.

        Args:
            x: (B, C, H, W) float tensor, already normalised as the model expects, on the model's device.
            classes: class indices or label names.
            output_size: (H, W) to upsample to; default the input's spatial size.
        """
        import torch
        import torch.nn.functional as F

        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise InputError(f"Grad-CAM input must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if len(classes) == 0:
            raise InputError("no classes given for Grad-CAM")
        size = tuple(output_size) if output_size is not None else tuple(x.shape[-2:])

        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise ModelError(
                    f"Grad-CAM layer {self.layer_name!r} returned {type(output).__name__} "
                    f"{getattr(output, 'shape', '')}, expected a (B, K, h, w) feature map",
                    hint="the registry's gradcam_layer must name the last convolutional block",
                )
            captured.append(output)
            # Later in-place ops (e.g. ReLU(inplace=True)) act on the clone, so `output` keeps its values and
            # remains a valid target for autograd.grad.
            return output.clone()

        was_training = self.model.training
        handle = self.layer.register_forward_hook(hook)
        try:
            self.model.eval()
            with torch.enable_grad():
                inp = x.detach().requires_grad_(True)  # gives activations a graph even with frozen weights
                logits = self.model(inp)
                if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                    raise ModelError(f"model returned {getattr(logits, 'shape', type(logits))}, expected (B, classes)")
                if not captured:
                    raise ModelError(f"Grad-CAM layer {self.layer_name!r} was not run by the model's forward")
                acts = captured[-1]
                idx = [class_index(c, logits.shape[1]) for c in classes]
                raws = []
                for n, c in enumerate(idx):
                    score = logits[:, c]
                    (grads,) = torch.autograd.grad(score.sum(), acts, retain_graph=n < len(idx) - 1,
                                                   allow_unused=True)
                    if grads is None:
                        grads = torch.zeros_like(acts)
                    raws.append(self._weighted_map(acts.detach(), grads.detach()))
        finally:
            handle.remove()
            self.model.train(was_training)

        raw = torch.stack(raws, dim=1).float()  # (B, C, h, w)
        up = F.interpolate(raw, size=size, mode="bilinear", align_corners=False).clamp_min_(0.0)
        peak = up.flatten(2).amax(dim=2)[..., None, None]
        maps = torch.where(peak > _EPS, up / peak.clamp_min(_EPS), torch.zeros_like(up))
        maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
        return CamResult(maps=maps.cpu().numpy().astype(np.float32), raw=raw.cpu().numpy().astype(np.float32),
                         logits=logits.detach().float().cpu().numpy(), classes=tuple(idx))

    def _weighted_map(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """ReLU(sum_k w_k A_k) for one class, (B, h, w)."""
        import torch

        acts = acts.float()
        grads = grads.float()
        if self.method == "gradcam":
            weights = grads.mean(dim=(2, 3), keepdim=True)
        else:
            g2 = grads.pow(2)
            g3 = g2 * grads
            denom = 2.0 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
            alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                                torch.zeros_like(denom))
            # The paper's exp(S_c) factor (d exp(S)/dA = exp(S) g) is a positive per-sample scalar: it scales the
            # whole map and cancels in the max-normalisation, so it is left out (it overflows for large logits).
            weights = (alpha * torch.relu(grads)).sum(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * acts).sum(dim=1))
        return torch.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
