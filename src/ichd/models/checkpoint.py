"""Checkpoints: weights travel with everything needed to use them.

A checkpoint is one ``torch.save``'d dict (format :data:`CHECKPOINT_FORMAT`)::

    format, ichd_version, model_name, model_kwargs, num_classes, labels, default_cfg, state_dict,
    config (the full typed training config as plain data), preprocess (PreprocessConfig as plain data),
    metrics, fold, epoch, extra, and for resuming: optimizer, scheduler, scaler, rng, step,
    digest ("sha256:<hex>" of every tensor and array in the dict, see :func:`payload_digest`)

:func:`load_checkpoint` rebuilds the model through the registry (no pretrained download, no weights file
needed) and checks the label order, so a checkpoint alone is enough to predict.

Files are written atomically (a temporary file renamed into place), so a killed run leaves the previous checkpoint
or the new one, never a part. A file damaged later is refused with a clear :class:`~ichd.errors.ModelError`, never
loaded: a truncated zip fails to open, and changed bytes inside a tensor (which ``torch.load`` itself does not
notice) fail the digest. Checkpoints written before the digest existed load without that check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ichd.constants import LABELS
from ichd.errors import InputError, ModelError

CHECKPOINT_FORMAT = "ichd-checkpoint/1"
#: Key of the payload digest in a checkpoint dict.
DIGEST_KEY = "digest"


def _array_leaves(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, tensor or ndarray)`` for every tensor/array in nested dicts, lists and tuples, in a fixed order."""
    import numpy as np

    if isinstance(obj, (torch.Tensor, np.ndarray)):
        yield path, obj
    elif isinstance(obj, dict):
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            if not (path == "" and key == DIGEST_KEY):
                yield from _array_leaves(obj[key], f"{path}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _array_leaves(item, f"{path}/{i}")


def payload_digest(payload: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` over the path, dtype, shape and bytes of every tensor and numpy array in ``payload``
    (weights, optimizer state, RNG states); the other values are small metadata that unpickling checks."""
    import numpy as np

    h = hashlib.sha256()
    for path, value in _array_leaves(payload):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            meta = f"{path}|{t.dtype}|{tuple(t.shape)}"
        else:
            arr = np.ascontiguousarray(value)
            data = arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode()
            meta = f"{path}|{arr.dtype.str}|{arr.shape}"
        h.update(meta.encode("utf-8"))
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return "sha256:" + h.hexdigest()


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
    payload[DIGEST_KEY] = payload_digest(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict of ``path``, validated (format, digest, label order). No model is built."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} not found", hint="pass the path of a .pt file written by ichd")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated / foreign files: one clear message
        detail = " ".join(str(e).split())
        detail = detail[: detail.find(". ") + 1] if ". " in detail else detail  # torch's first sentence
        raise ModelError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {detail[:300]}",
                         hint="the file is damaged (e.g. truncated) or was not written by ichd") from e
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{str(path)!r} is not an ichd checkpoint (format {CHECKPOINT_FORMAT!r} expected)",
                         hint="backbone weights files go to create_model(..., weights=PATH) instead")
    recorded = raw.get(DIGEST_KEY)
    if recorded is not None and recorded != payload_digest(raw):
        raise ModelError(f"checkpoint {str(path)!r} is damaged: its weights or training state differ from the "
                         "checksum written with them",
                         hint="use another copy of the file (a training run's last.pt: train the fold again "
                              "with --restart)")
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
