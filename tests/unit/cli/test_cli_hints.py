"""Advice in error messages names options that exist on the command that prints it (issue 15).

Every string in the reading, preprocessing, inference, explain and CLI code that mentions an option (``--xyz``)
is collected from the source; the commands that can print it are known per module (:data:`REACH`; a CLI module
reaches its own commands), or named in the string itself (``ichd preprocess INPUT --out CACHE``). Each option must
then be an option of each of those commands, read from the Typer app.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer

import ichd
from ichd.cli.main import build_app, run
from ichd.testing.factories import SECONDARY_CAPTURE_STORAGE, make_ct_slice, phantom_hu, write_series

SRC = Path(ichd.__file__).parent
#: Packages whose strings are checked.
SCANNED = ("io", "preprocessing", "inference", "explain", "cli")
#: The commands that read CT with the shared options of ``ichd.cli.inputs``.
CT_COMMANDS = ("ingest", "preprocess", "predict", "explain")
#: Which commands can print a module's messages (longest module prefix wins); ``""`` is ``ichd`` itself.
REACH: dict[str, tuple[str, ...]] = {
    "ichd.io": CT_COMMANDS,  # read_ct and the readers under it: every CT-reading command
    "ichd.cli.inputs": CT_COMMANDS,
    "ichd.cli.guard_help": ("predict", "explain"),  # the guards' help texts of both
    "ichd.cli.main": ("",),  # top-level options (--debug, --help); its messages put them right after `ichd`
    "ichd.preprocessing.cache": ("preprocess",),
    "ichd.preprocessing.dask_backend": ("preprocess",),
    "ichd.inference.run": ("predict",),
    "ichd.inference.submission": ("predict",),
    "ichd.inference.second_reader": ("predict", "serve"),  # --second-reader blast-ct of both
    "ichd.inference.embed": ("embed",),
    "ichd.inference.bundle_build": ("evaluate",),  # scripts/build_bundle.py; its advice is about `ichd evaluate`
    "ichd.explain": ("explain",),
}
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
COMMAND = re.compile(r"\bichd\s+([a-z][a-z-]*)(?:\s+([a-z][a-z-]*))?")
EVERYWHERE = {"--help", "-h"}


def _commands() -> dict[str, Any]:
    """Every (click) command by its path ("predict", "train cnn"); "" is the ``ichd`` group itself."""
    root = typer.main.get_command(build_app())
    out: dict[str, Any] = {"": root}

    def walk(group: Any, prefix: str) -> None:
        for name, cmd in group.commands.items():
            path = f"{prefix} {name}".strip()
            out[path] = cmd
            if hasattr(cmd, "commands"):  # a group (typer bundles its own click: no isinstance check)
                walk(cmd, path)

    walk(root, "")
    return out


COMMANDS = _commands()


def _options(command: Any) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))} | EVERYWHERE


def _command_sources() -> dict[str, tuple[Path, int, int, str]]:
    """Command path -> (file, first line, last line, source) of the function behind it."""
    out = {}
    for path, cmd in COMMANDS.items():
        if path and cmd.callback is not None:
            func = inspect.unwrap(cmd.callback)
            lines, start = inspect.getsourcelines(func)
            out[path] = (Path(inspect.getsourcefile(func)).resolve(), start, start + len(lines) - 1, "".join(lines))
    return out


SOURCES = _command_sources()


def _reach(module: str, file: Path, line: int, function: str | None) -> tuple[str, ...] | None:
    """The commands that can print a string at ``file:line`` (inside ``function``, if any)."""
    if module.startswith("ichd.cli."):
        # inside a command: that command; inside a helper: the commands that call it
        inside = tuple(c for c, (f, first, last, _) in SOURCES.items() if f == file.resolve() and first <= line <= last)
        if inside:
            return inside
        callers = tuple(c for c, (_, _, _, text) in SOURCES.items() if function and f"{function}(" in text)
        if callers:
            return callers
    best = max((prefix for prefix in REACH if module == prefix or module.startswith(prefix + ".")),
               key=len, default=None)
    if best is not None:
        return REACH[best]
    own = tuple(c for c, cmd in COMMANDS.items() if c and cmd.callback is not None
                and cmd.callback.__module__ == module)
    return own or None


def _is_docstring(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    parent = parents.get(node)
    owner = parents.get(parent) if isinstance(parent, ast.Expr) else None
    return (isinstance(owner, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and owner.body and owner.body[0] is parent)


def _is_option_declaration(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """A positional string of ``typer.Option(...)`` / ``typer.Argument(...)`` (or ``_option(...)`` of
    ``ichd.cli.inputs``): the names being declared."""
    call = parents.get(node)
    if not isinstance(call, ast.Call) or node not in call.args:
        return False
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("Option", "Argument", "_option")


def _strings(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, text, enclosing function) of every string literal of ``path`` except docstrings and option
    declarations; the placeholders of f-strings become ``{}``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not isinstance(
                parents.get(node), ast.JoinedStr):
            if _is_docstring(node, parents) or _is_option_declaration(node, parents):
                continue
            text = node.value
        else:
            continue
        owner = parents.get(node)
        while owner is not None and not isinstance(owner, ast.FunctionDef | ast.AsyncFunctionDef):
            owner = parents.get(owner)
        out.append((node.lineno, text, owner.name if owner is not None else None))
    return out


def _mentions() -> list[tuple[str, int, str, str]]:
    """(module, line, option, command path) for every option a string mentions, for each command that can
    print it; a module nobody classified gives command ``"?"``."""
    found = []
    for package in SCANNED:
        for path in sorted((SRC / package).rglob("*.py")):
            module = "ichd." + ".".join(path.relative_to(SRC).with_suffix("").parts)
            for line, text, function in _strings(path):
                # split at each "ichd <command>": what follows it is about that command
                cuts = [(m.start(), named) for m in COMMAND.finditer(text) if (named := _named(m)) is not None]
                spans = [(0, None), *cuts]
                for k, (start, named) in enumerate(spans):
                    end = spans[k + 1][0] if k + 1 < len(spans) else len(text)
                    options = OPTION.findall(text[start:end])
                    if not options:
                        continue
                    reach = (named,) if named is not None else (_reach(module, path, line, function) or ("?",))
                    found.extend((module, line, opt, cmd) for opt in options for cmd in reach)
    return found


def _named(match: re.Match[str]) -> str | None:
    """The command a ``ichd WORD [WORD]`` mention names (the group when the second word is no subcommand);
    None when WORD is no command ("an ichd labels CSV")."""
    first, second = match.group(1), match.group(2)
    if second and f"{first} {second}" in COMMANDS:
        return f"{first} {second}"
    return first if first in COMMANDS else None


MENTIONS = _mentions()


def test_every_advised_option_exists_on_the_commands_that_print_it() -> None:
    unclassified = sorted({m for m, _, _, cmd in MENTIONS if cmd == "?"})
    assert not unclassified, f"add these modules to REACH (which commands print their messages?): {unclassified}"
    missing = sorted({(cmd or "ichd", opt, f"{module}:{line}") for module, line, opt, cmd in MENTIONS
                      if opt not in _options(COMMANDS[cmd])})
    assert not missing, "options advised but not accepted (command, option, where):\n" + "\n".join(map(str, missing))


def test_the_scan_finds_the_reader_hints() -> None:
    """Guards the test above against finding nothing: known hints of the readers are attributed to every
    CT-reading command."""
    pairs = {(module, opt, cmd) for module, _, opt, cmd in MENTIONS}
    for module, opt in [("ichd.io.reader", "--allow-secondary-capture"), ("ichd.io.dicom", "--strict"),
                        ("ichd.io.images", "--window"), ("ichd.io.decode", "--workers")]:
        for cmd in CT_COMMANDS:
            assert (module, opt, cmd) in pairs
    assert ("ichd.preprocessing.cache", "--out", "preprocess") in pairs
    assert ("ichd.inference.run", "--overwrite", "predict") in pairs


def test_ct_commands_share_one_definition_of_each_input_option() -> None:
    """The same option has the same help text everywhere (one definition in ichd.cli.inputs)."""
    helps: dict[str, set[str]] = {}
    for name in CT_COMMANDS:
        for p in COMMANDS[name].params:
            if p.name in ("window", "strict", "allow_secondary_capture", "independent", "series") or (
                    p.name == "workers" and name != "preprocess"):
                helps.setdefault(p.name, set()).add(getattr(p, "help", ""))
    assert set(helps) == {"window", "strict", "allow_secondary_capture", "independent", "series", "workers"}
    assert all(len(texts) == 1 for texts in helps.values()), helps


# ----------------------------------------------------------------------------------------------------------------
# behaviour: the advice works on the command that gave it
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture
def hu_secondary_capture(tmp_path: Path) -> Path:
    """A folder with one Secondary Capture whose stored values are HU (like ../shared/data/hu-slices)."""
    folder = tmp_path / "sc"
    write_series(folder, [make_ct_slice(phantom_hu(32, 32), sop_class=SECONDARY_CAPTURE_STORAGE, modality="OT",
                                        drop_tags=("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                                   "RescaleIntercept", "RescaleSlope", "SliceThickness"),
                                        intercept=0.0)])
    return folder


@pytest.mark.parametrize("command", ["ingest", "explain"])
def test_secondary_capture_hint_names_an_option_of_the_command(hu_secondary_capture: Path, tmp_path: Path,
                                                               command: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-such-model.pt")] if command == "explain" \
        else []
    assert run(["-q", command, str(hu_secondary_capture), *extra]) == 2
    err = capsys.readouterr().err
    assert "secondary capture" in err.lower() and "pass --allow-secondary-capture" in err
    code = run(["-q", command, str(hu_secondary_capture), "--allow-secondary-capture", *extra])
    err = capsys.readouterr().err
    assert "--allow-secondary-capture" not in err  # read: the error now (explain) is the missing model
    if command == "explain":
        assert code == 2 and "no-such-model.pt" in err
    else:
        assert code == 0


def test_preprocess_reads_secondary_captures_when_allowed(hu_secondary_capture: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cache"
    args = ["-q", "preprocess", str(hu_secondary_capture), "--out", str(out), "--size", "32", "--workers", "1"]
    assert run(args) == 2
    assert "secondary capture" in capsys.readouterr().err
    assert run([*args, "--allow-secondary-capture"]) == 0
    (entry,) = json.loads((out / "manifest.json").read_text())["series"]
    assert entry["n_slices"] == 1
    assert np.load(out / entry["file"]).shape[-2:] == (32, 32)
