"""The CLI entry point: exit codes and one-line errors (never a traceback without --debug)."""

from __future__ import annotations

import typer

from ichd.cli import main as cli_main
from ichd.errors import InputError


def _app_with(monkeypatch, func):
    real_build = cli_main.build_app

    def build():
        app = real_build()
        app.command("boom")(func)
        return app

    monkeypatch.setattr(cli_main, "build_app", build)


def test_help_and_version(capsys):
    assert cli_main.run(["--help"]) == 0
    assert "hemorrhage" in capsys.readouterr().out
    assert cli_main.run(["--version"]) == 0
    assert "ichd" in capsys.readouterr().out


def test_unknown_command_is_usage_error(capsys):
    assert cli_main.run(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_bad_option_value_is_usage_error(monkeypatch, capsys):
    def boom(n: int = typer.Option(1, "--n")) -> None:
        """Test command."""

    _app_with(monkeypatch, boom)
    assert cli_main.run(["boom", "--n", "abc"]) == 2
    err = capsys.readouterr().err
    assert "--n" in err and "Traceback" not in err and "internal error" not in err


def test_input_error_is_one_line_exit_2(monkeypatch, capsys):
    def boom() -> None:
        """Test command."""
        raise InputError("folder 'x' holds no CT", hint="point at a DICOM folder")

    _app_with(monkeypatch, boom)
    assert cli_main.run(["boom"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ichd: error: folder 'x' holds no CT — point at a DICOM folder"]


def test_unexpected_error_is_one_line_unless_debug(monkeypatch, capsys):
    def boom() -> None:
        """Test command."""
        raise RuntimeError("kaput")

    _app_with(monkeypatch, boom)
    assert cli_main.run(["boom"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: kaput" in err and "Traceback" not in err
    assert cli_main.run(["--debug", "boom"]) == 1
    assert "Traceback" in capsys.readouterr().err
