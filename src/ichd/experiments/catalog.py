"""Where experiment files live and how names find them.

The folder is ``--dir`` when given, else ``$ICHD_EXPERIMENTS``, else ``configs/experiments`` under the working
directory, else the ``configs/experiments`` folder of the source checkout ichd runs from. An experiment is named
by its file stem; a path to a YAML file works too.
"""

from __future__ import annotations

import os
from pathlib import Path

from ichd.errors import ConfigError, InputError, did_you_mean

#: Environment variable naming the experiments folder.
EXPERIMENTS_ENV = "ICHD_EXPERIMENTS"
#: The folder, relative to the working directory or the source checkout.
DEFAULT_DIR = Path("configs") / "experiments"


def experiments_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The experiments folder (see the module docstring); an :class:`InputError` when none exists."""
    if explicit is not None:
        candidates = [Path(explicit)]
    elif os.environ.get(EXPERIMENTS_ENV):
        candidates = [Path(os.environ[EXPERIMENTS_ENV])]
    else:
        checkout = Path(__file__).resolve().parents[3]  # src/ichd/experiments/ -> the repository root
        candidates = [DEFAULT_DIR, checkout / DEFAULT_DIR]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise InputError(f"no experiments folder: looked for {', '.join(str(c) for c in candidates)}",
                     hint=f"run from the ichd checkout, pass --dir, or set {EXPERIMENTS_ENV}")


def experiment_files(folder: Path) -> dict[str, Path]:
    """``name -> path`` of every ``*.yaml`` in ``folder``, sorted by name."""
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def find_experiment(name: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """The file of experiment ``name`` in ``folder`` (default :func:`experiments_dir`), or ``name`` itself when it
    is a YAML file; unknown names raise :class:`ConfigError` with a "did you mean"."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml"):
        if not as_path.is_file():
            raise InputError(f"experiment file {name!r} not found")
        return as_path
    files = experiment_files(experiments_dir(folder))
    if name not in files:
        raise ConfigError(f"unknown experiment {name!r}; {did_you_mean(name, files)}",
                          hint="`ichd experiments list` shows every experiment")
    return files[name]
