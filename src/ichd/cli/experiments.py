"""``ichd experiments list|run|compare``: the seed papers' systems as configurations of the one trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

HELP = """The five seed papers' systems as experiments on your data: the same data, patient folds and evaluation for
each (configs/experiments/NAME.yaml). `list` shows them, `run NAME` trains and evaluates one (out-of-fold
predictions, ichd evaluate, summary.json), `compare RUN...` builds one Markdown table with each paper's own
published numbers beside ours.
"""

experiments_app = typer.Typer(help=HELP, no_args_is_help=True)

DirOption = Annotated[Path | None, typer.Option(
    "--dir", help="Experiments folder (default: $ICHD_EXPERIMENTS, else configs/experiments here or in the "
                  "ichd checkout).")]


@experiments_app.command("list")
def list_cmd(
    folder: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the experiments: name, method, paper, what runs, initial weights, notes."""
    from ichd.experiments.catalog import experiment_files, experiments_dir
    from ichd.experiments.config import load_experiment

    exps = [load_experiment(p) for p in experiment_files(experiments_dir(folder)).values()]
    rows = [{"name": e.name, "method": e.method, "paper": e.paper, "kind": e.kind, "runs": e.runs, "init": e.init,
             "notes": e.notes, "profiles": sorted(e.profiles)} for e in exps]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['name']}\n  method: {r['method']}\n  paper:  {r['paper']}\n  runs:   {r['runs']}\n"
                   f"  init:   {r['init']}")
        for note in r["notes"]:
            typer.echo(f"  note:   {note}")
        if r["profiles"]:
            typer.echo(f"  profiles: {', '.join(r['profiles'])}")


def _parse_folds(text: str | None) -> list[int] | None:
    from ichd.errors import ConfigError

    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ConfigError(f"--folds {text!r} must be fold numbers separated by commas, e.g. 0,1") from None


@experiments_app.command("run")
def run_cmd(
    name: Annotated[str, typer.Argument(help="Experiment name (see `ichd experiments list`) or a YAML file.")],
    folds: Annotated[str | None, typer.Option("--folds", help="CV folds to run, e.g. 0,1 (default: every "
                                                               "fold).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Cap each model at N optimizer steps (a "
                                                                       "quick end-to-end check).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default "
                                                                 "runs/experiments/NAME).")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override an experiment value, KEY=VALUE with a dotted key (repeatable), e.g. "
                      "--set cnn.optim.batch_size=16 or --set evaluation.bootstrap=200.")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Apply one of the experiment's profiles "
                                                                   "(e.g. cpu: the comparison's CPU settings).")] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", help="Initial backbone weights for the slice CNN (a state dict in the architecture's "
                          "torchvision / MONAI layout); same as --set cnn.model.weights=FILE.")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Train folds from scratch instead of resuming.")] = False,
    folder: DirOption = None,
) -> None:
    """Train and evaluate one experiment on the default model's patient folds; writes OUT/summary.json."""
    from ichd.cli.train import _parse_overrides
    from ichd.errors import InputError
    from ichd.experiments.catalog import find_experiment
    from ichd.experiments.config import load_experiment
    from ichd.experiments.runner import RunOptions, run_experiment

    path = find_experiment(name, folder)
    sets = _parse_overrides(overrides)
    if weights is not None:
        if not weights.is_file():
            raise InputError(f"weights file {str(weights)!r} not found", hint="pass an existing .pth/.pt file")
        sets.update({"cnn.model.weights": str(weights), "cnn.model.pretrained": False})
    exp = load_experiment(path, profile=profile, overrides=sets)
    summary = run_experiment(exp, RunOptions(folds=_parse_folds(folds), max_steps=max_steps, out=out,
                                             restart=restart))
    for stage, m in summary["stages"].items():
        sl, sc = m.get("slice_any") or {}, m.get("scan_any") or {}
        typer.echo(f"{summary['name']} / {stage}: weighted log loss {_fmt(m.get('weighted_log_loss'), 4)}, slice "
                   f"AUC any {_fmt(sl.get('auc'))}, scan AUC any {_fmt(sc.get('auc'))}")
    for note in summary["notes"][len(exp.notes):]:
        typer.echo(f"note: {note}")
    typer.echo(f"summary: {Path(summary['out']) / 'summary.json'}")


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


@experiments_app.command("compare")
def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders of `ichd experiments run` (each holds "
                                                    "summary.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Markdown file to write.")],
    folds: Annotated[str | None, typer.Option("--folds", help="Re-evaluate every run on the patients of these "
                                              "folds only (e.g. 0), so runs that trained different folds share "
                                              "one test set; the evaluations go to OUT_STEM_eval/RUN/.")] = None,
) -> None:
    """One Markdown table over experiment runs, with each paper's own published numbers in a separate column."""
    from ichd.experiments.compare import write_comparison

    path = write_comparison(list(runs), out, folds=_parse_folds(folds))
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add the ``experiments`` command group to ``app``."""
    app.add_typer(experiments_app, name="experiments")
