"""Checkpoints: weights travel with everything needed to use them.

A checkpoint is one ``torch.save``'d dict (format :data:`CHECKPOINT_FORMAT`)::

    format, ichd_version, model_name, model_kwargs, num_classes, labels, default_cfg, state_dict,
    config (the full typed training config as plain data), preprocess (PreprocessConfig as plain data),
    metrics, fold, epoch, extra, and for resuming: optimizer, scheduler, scaler, rng, step

:func:`load_checkpoint` rebuilds the model through the registry (no pretrained download, no weights file
needed) and checks the label order, so a checkpoint alone is enough to predict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ichd.constants import LABELS
from ichd.errors import InputError, ModelError

CHECKPOINT_FORMAT = "ichd-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the ready model (``eval()`` mode, on ``map_location``) plus its metadata."""

    model: torch.nn.Module
    model_name: str
    labels: tuple[str, ...]
    config: dict[str, Any]
    preprocess: dict[str, Any]
    metrics: dict[str, Any]
    fold: int | str | None
    epoch: int | None
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    #: The raw dict (includes optimizer / scheduler state for resuming).
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def default_cfg(self) -> dict[str, Any]:
        return dict(getattr(self.model, "default_cfg", {}) or self.raw.get("default_cfg", {}))


def _plain(obj: Any) -> Any:
    """Dataclass configs -> plain dicts (checkpoints must load without ichd's config classes)."""
    import dataclasses

    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        from ichd.config import config_to_dict

        return config_to_dict(obj)
    return obj


def save_checkpoint(path: str | Path, model: torch.nn.Module, *, config: Any = None, preprocess: Any = None,
                    metrics: dict[str, Any] | None = None, fold: int | str | None = None,
                    epoch: int | None = None, training_state: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write ``model`` and its metadata to ``path`` atomically and return the path.

    ``model`` must come from :func:`ichd.models.create_model` (it carries ``default_cfg`` and
    ``model_kwargs``). ``training_state`` (optimizer, scheduler, scaler, rng, step) makes the file
    resumable. ``half`` stores floating-point weights as float16 (half the size, for shipping);
    :func:`load_checkpoint` casts them back to the model's float32 parameters.
    """
    from ichd import __version__
    from ichd.utils.files import atomic_path

    cfg = getattr(model, "default_cfg", None)
    if not cfg or "name" not in cfg:
        raise ModelError("save_checkpoint needs a model built by ichd.models.create_model (no default_cfg)")
    num_classes = int(cfg.get("num_classes", len(LABELS)))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "ichd_version": __version__,
        "model_name": cfg["name"],
        "model_kwargs": dict(getattr(model, "model_kwargs", {})),
        "num_classes": num_classes,
        "labels": list(LABELS) if num_classes == len(LABELS) else list(cfg.get("labels") or []),
        "default_cfg": dict(cfg),
        "state_dict": state,
        "weights_dtype": "float16" if half else "float32",
        "config": _plain(config),
        "preprocess": _plain(preprocess),
        "metrics": dict(metrics or {}),
        "fold": fold,
        "epoch": epoch,
        "extra": dict(extra or {}),
    }
    if training_state:
        payload.update(training_state)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict of ``path``, validated (format, label order). No model is built."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} not found", hint="pass the path of a .pt file written by ichd")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated / foreign files: one clear message
        raise ModelError(f"cannot read checkpoint {str(path)!r}: {e}",
                         hint="the file is damaged or was not written by ichd") from e
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{str(path)!r} is not an ichd checkpoint (format {CHECKPOINT_FORMAT!r} expected)",
                         hint="backbone weights files go to create_model(..., weights=PATH) instead")
    labels = tuple(raw.get("labels") or ())
    if raw.get("num_classes") == len(LABELS) and labels != LABELS:
        raise ModelError(f"checkpoint {str(path)!r} has label order {labels}, ichd uses {LABELS}",
                         hint="re-train or convert the checkpoint; outputs would be mislabelled")
    return raw


def model_from_checkpoint_dict(raw: dict[str, Any], *, map_location: str | torch.device = "cpu",
                               where: str | Path = "<checkpoint dict>") -> Checkpoint:
    """Build the :class:`Checkpoint` of an already-read checkpoint dict (e.g. one embedded in another file).

    Rebuilds the model via the registry, loads its weights and puts it in ``eval()`` mode; ``where`` names the
    source in error messages.
    """
    from ichd.models.registry import create_model

    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{where}: not an ichd checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    labels = tuple(raw.get("labels") or ())
    if raw.get("num_classes") == len(LABELS) and labels != LABELS:
        raise ModelError(f"{where}: label order {labels} differs from ichd's {LABELS}",
                         hint="re-train or convert the checkpoint; outputs would be mislabelled")
    model = create_model(raw["model_name"], pretrained=False, num_classes=int(raw["num_classes"]),
                         **raw.get("model_kwargs", {}))
    try:
        model.load_state_dict(raw["state_dict"], strict=True)
    except RuntimeError as e:
        raise ModelError(f"{where}: weights do not fit model {raw['model_name']!r}: {e}") from e
    model.to(map_location).eval()
    return Checkpoint(model=model, model_name=raw["model_name"], labels=labels,
                      config=raw.get("config") or {}, preprocess=raw.get("preprocess") or {},
                      metrics=raw.get("metrics") or {}, fold=raw.get("fold"), epoch=raw.get("epoch"),
                      path=Path(str(where)), extra=raw.get("extra") or {}, raw=raw)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load ``path``: rebuild the model via the registry, load its weights, put it in ``eval()`` mode."""
    path = Path(path)
    raw = read_checkpoint(path, map_location=map_location)
    ckpt = model_from_checkpoint_dict(raw, map_location=map_location, where=f"checkpoint {str(path)!r}")
    ckpt.path = path
    return ckpt
