"""Entry point of the ``ichd`` command.

Each command group lives in its own module under :mod:`ichd.cli` and exposes ``register(app)``;
:data:`COMMAND_MODULES` lists them. Heavy imports (torch, pydicom) happen inside the commands, so
``ichd --help`` is fast. Errors: an :class:`ichd.errors.IchdError` becomes one line on stderr and its
exit code (2 for bad input); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click
import typer

from ichd import __version__
from ichd.cli.state import STATE
from ichd.errors import IchdError

#: Modules under ichd.cli that add commands (each has ``register(app: typer.Typer) -> None``).
COMMAND_MODULES: tuple[str, ...] = (
    "ingest",
    "models",
    "preprocess",
    "train",
    "train_seq",
    "train_frozen",
    "embed",
    "evaluate",
    "experiments",
    "predict",
    "explain",
    "serve",
    "listen",
)

HELP = """ichd — intracranial hemorrhage detection and subtype classification on head CT.

Reads a CT study (DICOM folder/zip, NIfTI, windowed PNG/JPG slices) and reports the probability of each
hemorrhage subtype (any, epidural, intraparenchymal, intraventricular, subarachnoid, subdural) per slice and
per scan. The same tool preprocesses data, trains and evaluates the models.

Research software: not a medical device.
"""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ichd {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """Build the typer application with every command group registered."""
    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False,
                      context_settings={"help_option_names": ["-h", "--help"]},
                      pretty_exceptions_enable=False)

    @app.callback()
    def _root(
        verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv for debug)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors; no progress bars."),
        debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                     help="Print the version and exit."),
    ) -> None:
        from ichd.utils.logging import configure_logging
        from ichd.utils.progress import set_progress_enabled

        STATE.debug = debug
        STATE.verbosity = -1 if quiet else verbose
        configure_logging(STATE.verbosity)
        set_progress_enabled(not quiet)

    for name in COMMAND_MODULES:
        importlib.import_module(f"ichd.cli.{name}").register(app)
    return app


def _fail(message: str, code: int) -> int:
    typer.secho(f"ichd: error: {message}", err=True, fg="red")
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` and return the exit code (used by :func:`main` and the tests)."""
    app = build_app()
    try:
        app(args=argv, prog_name="ichd", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as e:
        return int(getattr(e, "exit_code", 0))
    except (click.exceptions.Abort, typer.Abort):
        return _fail("aborted", 130)
    except (click.ClickException, typer.TyperException) as e:
        # usage errors (bad option values, missing arguments): click prints usage + one line
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            _fail(str(e), 2)
        return int(getattr(e, "exit_code", 2) or 2)
    except IchdError as e:
        if STATE.debug:
            traceback.print_exc()
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - an ichd bug: still one line unless --debug
        if STATE.debug:
            traceback.print_exc()
        return _fail(f"internal error: {type(e).__name__}: {e} (run again as `ichd --debug COMMAND ...` for the "
                     f"traceback, and report this)", 1)
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
