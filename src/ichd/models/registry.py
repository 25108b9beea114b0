"""Model registry: one name -> one builder, listable, with "did you mean" errors.

Slice CNNs register themselves in :mod:`ichd.models.backbones`; other model families (e.g. sequence models)
may register in their own module and add it to :data:`MODEL_MODULES` so listing finds them. Builders are
plain functions ``builder(*, pretrained, num_classes, weights, **kwargs) -> torch.nn.Module``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ichd.errors import ModelError, did_you_mean

#: Modules whose import registers models (imported lazily, on first use of the registry).
MODEL_MODULES: tuple[str, ...] = ("ichd.models.backbones", "ichd.models.sequence", "ichd.models.frozen")


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model name."""

    name: str
    builder: Callable[..., Any]
    family: str  # "slice" (2D CNN over one slice) or another family name, e.g. "sequence"
    description: str
    source: str  # the paper / library the architecture comes from
    pretrained_available: bool  # offline ImageNet weights ship with the installed packages
    defaults: dict[str, Any] = field(default_factory=dict)  # default keyword arguments (e.g. input_size)


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register_model(name: str, *, family: str, description: str, source: str,
                   pretrained_available: bool = False, defaults: dict[str, Any] | None = None
                   ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder`` under ``name``. Registering a name twice is a programming error."""

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name=name, builder=builder, family=family, description=description,
                                    source=source, pretrained_available=pretrained_available,
                                    defaults=dict(defaults or {}))
        return builder

    return deco


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        for module in MODEL_MODULES:
            importlib.import_module(module)
        _LOADED = True


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, sorted; only those of ``family`` when given."""
    _ensure_loaded()
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; unknown names raise :class:`ModelError` with a suggestion."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; {did_you_mean(name, _REGISTRY)}",
                         hint="`ichd models list` shows every model") from None


def model_info(name: str) -> dict[str, Any]:
    """Plain description of model ``name`` (for ``ichd models info``): family, source, defaults, ..."""
    spec = model_spec(name)
    return {"name": spec.name, "family": spec.family, "description": spec.description, "source": spec.source,
            "pretrained_available": spec.pretrained_available, "defaults": dict(spec.defaults)}


def create_model(name: str, *, pretrained: bool = False, num_classes: int = 6,
                 weights: str | Path | None = None, **kwargs: Any) -> Any:
    """Build model ``name``.

    ``pretrained`` loads the offline ImageNet weights shipped with the installed packages (only where
    :attr:`ModelSpec.pretrained_available`); ``weights`` loads a user-supplied backbone weights file
    instead. Extra keyword arguments (e.g. ``input_size``) go to the builder.
    """
    spec = model_spec(name)
    if pretrained and weights is not None:
        raise ModelError(f"model {name!r}: pass either pretrained=True or weights=PATH, not both")
    if pretrained and not spec.pretrained_available:
        raise ModelError(f"model {name!r} has no offline pretrained weights in this installation",
                         hint="use pretrained=False, or pass a weights file with weights=PATH")
    args = {**spec.defaults, **kwargs}
    return spec.builder(pretrained=pretrained, num_classes=num_classes, weights=weights, **args)
