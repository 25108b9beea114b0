"""The CT input options, defined once for every command that reads CT (``ingest``, ``preprocess``, ``predict``,
``explain``).

An error message may tell the user to pass one of these options (``--window``, ``--strict``,
``--allow-secondary-capture``, ``--workers``, ...) whichever of those commands printed it, so each option has one
name, one meaning and one help text here. A command takes the ones that apply to it with
:func:`ct_input_options` and receives them as one :class:`CTInputOptions`::

    @app.command("explain")
    @ct_input_options("window", "strict", "allow_secondary_capture", "independent", "workers", "series")
    def explain(input_path: ..., out: ..., *, inputs: CTInputOptions) -> None:
        all_series = inputs.read(input_path)

``tests/unit/cli/test_cli_hints.py`` checks that every option an error message names exists on each command
that can print that message.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from ichd.types import CTSeries

F = TypeVar("F", bound=Callable[..., Any])
P = TypeVar("P", bound="str | os.PathLike[str]")

#: Help panel of these options in ``--help``.
PANEL = "Reading CT"


def _option(kind: Any, *decls: str, text: str, **kwargs: Any) -> Any:
    """``Annotated[kind, typer.Option(*decls, help=text, ...)]`` in the help panel of these options."""
    return Annotated[kind, typer.Option(*decls, help=text, rich_help_panel=PANEL, **kwargs)]


#: The options a command can take: parameter name -> (annotated type, default).
OPTIONS: dict[str, tuple[Any, Any]] = {
    "window": (_option(str | None, "--window", metavar="LEVEL,WIDTH",
                       text="Window the PNG/JPG slices were exported with, in HU (e.g. 40,80). Needed only for "
                            "folders of windowed PNG/JPG slices; not for DICOM, NIfTI or CT-ICH."), None),
    "strict": (_option(bool, "--strict",
                       text="Fail on the first broken file (not DICOM, truncated, missing/inconsistent tags, "
                            "undecodable, odd matrix size) instead of skipping it with a warning."), False),
    "allow_secondary_capture": (_option(bool, "--allow-secondary-capture",
                                        text="Read DICOM Secondary Capture images (Modality CT/OT) whose stored "
                                             "values are HU, e.g. ../shared/data/hu-slices, as CT; by default "
                                             "they are skipped."), False),
    "independent": (_option(bool, "--independent",
                            text="Treat every image (DICOM or PNG/JPG) as its own one-slice scan, e.g. a folder of "
                                 "unrelated RSNA slices."), False),
    "workers": (_option(int | None, "--workers", "-j", min=1,
                        text="DICOM decoding workers (default min(2, CPUs); 1 decodes in this process)."), None),
    "series": (_option(str | None, "--series", metavar="UID",
                       text="Use only the series with this SeriesInstanceUID (default: every series; `ichd ingest "
                            "PATH` lists them)."), None),
}


@dataclass(frozen=True)
class CTInputOptions:
    """How a command reads its CT input (the values of the options above; defaults where a command lacks one).

    ``window`` is checked when the options are made, so a bad ``--window`` fails before any work.
    """

    window: str | None = None
    strict: bool = False
    allow_secondary_capture: bool = False
    independent: bool = False
    workers: int | None = None
    series: str | None = None

    def __post_init__(self) -> None:
        self.window_hu  # noqa: B018 - raises InputError for a malformed window

    @property
    def window_hu(self) -> tuple[float, float] | None:
        """``(level, width)`` of ``window``, or None."""
        from ichd.io.images import parse_window

        return None if self.window is None else parse_window(self.window)

    def read_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`ichd.io.read_ct`."""
        return {"window": self.window, "strict": self.strict, "allow_secondary_capture": self.allow_secondary_capture,
                "independent": self.independent, "workers": self.workers}

    def read(self, path: str | os.PathLike[str]) -> list[CTSeries]:
        """Read ``path`` with :func:`ichd.io.read_ct`, keeping only ``series`` when it is given."""
        return [s for _, s in self.read_each([path])]

    def read_each(self, paths: Sequence[P]) -> list[tuple[P, CTSeries]]:
        """``(path, series)`` for every series of ``paths``, keeping only ``series`` (in any of them) when given;
        :class:`~ichd.errors.InputError` when no path holds it."""
        from ichd.inference.run import select_series
        from ichd.io import read_ct

        found = [(path, s) for path in paths for s in read_ct(path, **self.read_kwargs())]
        if self.series is None:
            return found
        chosen = {id(s) for s in select_series([s for _, s in found], self.series)}
        return [(path, s) for path, s in found if id(s) in chosen]


def ct_input_options(*names: str) -> Callable[[F], F]:
    """Decorator for a Typer command: add the input options ``names`` (keys of :data:`OPTIONS`) to its command
    line and pass their values to the command as its keyword-only ``inputs: CTInputOptions`` parameter (which
    the command line does not see)."""
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown CT input option(s) {unknown}; known: {', '.join(OPTIONS)}")

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        if "inputs" not in signature.parameters:
            raise TypeError(f"{command.__name__} must take an 'inputs: CTInputOptions' parameter")
        own = [p for p in signature.parameters.values() if p.name != "inputs"]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=OPTIONS[n][0],
                                   default=OPTIONS[n][1]) for n in names]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            chosen = {n: kwargs.pop(n) for n in names}
            return command(*args, inputs=CTInputOptions(**chosen), **kwargs)

        params = [*own, *added]
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not p.empty}
        wrapper.__annotations__["return"] = signature.return_annotation
        return wrapper  # type: ignore[return-value]

    return decorate
