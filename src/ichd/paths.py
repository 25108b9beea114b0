"""Where things live: the shared data folder (``ICHD_DATA``) and packaged resources."""

from __future__ import annotations

import os
from pathlib import Path

from ichd.constants import DATA_ENV_VAR, DEFAULT_DATA_DIR
from ichd.errors import InputError


def data_dir(*, must_exist: bool = True) -> Path:
    """The shared data folder: ``$ICHD_DATA`` or ``../shared/data`` relative to the working directory.

    Raises :class:`InputError` (when ``must_exist``) with instructions if the folder is missing.
    """
    path = Path(os.environ.get(DATA_ENV_VAR, DEFAULT_DATA_DIR)).expanduser()
    if must_exist and not path.is_dir():
        raise InputError(
            f"data folder {str(path)!r} does not exist",
            hint=f"set {DATA_ENV_VAR} to the folder that holds ct-ich/, cq500/, ... (default {DEFAULT_DATA_DIR})",
        )
    return path


def package_resource(*parts: str) -> Path:
    """Path of a file shipped inside the ``ichd`` package (e.g. ``package_resource("resources", "demo")``)."""
    return Path(__file__).resolve().parent.joinpath(*parts)
