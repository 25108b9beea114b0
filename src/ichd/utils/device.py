"""Device choice in one place: CUDA when available (or asked for), else CPU. No ``.cuda()`` elsewhere."""

from __future__ import annotations

from ichd.errors import InputError


def resolve_device(name: str | None = None):  # -> torch.device
    """Return a ``torch.device`` for ``name`` ("auto"/None, "cpu", "cuda", "cuda:1").

    "auto" picks CUDA when available. Asking for CUDA on a machine without it is an :class:`InputError`.
    """
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available here", hint="use --device cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise InputError(f"unknown device {name!r}", hint="use 'auto', 'cpu' or 'cuda[:N]'")
    return torch.device(name)
