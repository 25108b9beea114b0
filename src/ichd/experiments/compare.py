"""One Markdown table over experiment runs (their ``summary.json``): one row per evaluated stage, our numbers
with 95% patient-bootstrap intervals, the cost, the settings that ran, and each paper's own published numbers in a
separate column (the paper's data, not ours: for orientation, never a like-for-like comparison).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ichd.errors import InputError

#: Stage names in the table.
STAGE_LABELS = {"cnn": "slice CNN", "seq": "+ sequence model", "baseline": "PCA baseline"}


def load_summary(path: str | Path) -> dict[str, Any]:
    """``summary.json`` of a run folder (or the file itself)."""
    p = Path(path)
    p = p / "summary.json" if p.is_dir() else p
    if not p.is_file():
        raise InputError(f"no summary.json at {str(path)!r}", hint="run the experiment first (ichd experiments run)")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {p}: {e}") from e


def _run_file(run_dir: Path, summary: dict[str, Any], recorded: str) -> Path:
    """A file the summary names by its path at run time, found in ``run_dir`` (a run folder may have been
    copied elsewhere, e.g. into benchmarks/results)."""
    rec, root = Path(recorded), Path(summary.get("out") or "")
    try:
        return run_dir / rec.relative_to(root)
    except ValueError:
        return rec


def _stage_folds_csv(run_dir: Path, stage: str) -> Path:
    return run_dir / ("baseline" if stage == "baseline" else "cnn") / "folds.csv"


def restrict_to_folds(run_dir: str | Path, folds: list[int], eval_root: str | Path, *, sensitivity: float = 0.95,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The run's summary with every stage re-evaluated on the patients of ``folds`` only (the common test set
    of runs that trained different folds): its out-of-fold predictions of those patients, evaluated by
    ``ichd evaluate`` into ``eval_root/<stage>``. Costs, parameters and settings stay as run. A stage that has
    no prediction for some patient of ``folds`` is an :class:`InputError` (its run did not test that fold)."""
    import pandas as pd

    from ichd.data.folds import read_patient_folds
    from ichd.evaluation.report import evaluate_files
    from ichd.experiments.summary import evaluation_summary
    from ichd.training.cnn import resolve_labels_path
    from ichd.utils.files import atomic_write_text

    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    labels = [resolve_labels_path(f) for f in summary.get("settings", {}).get("labels") or []]
    if not labels:
        raise InputError(f"{run_dir}/summary.json names no label files", hint="re-run the experiment")
    stages: dict[str, Any] = {}
    for stage, m in summary.get("stages", {}).items():
        assignment = read_patient_folds(_stage_folds_csv(run_dir, stage))
        keep = {str(p) for p, f in assignment.items() if int(f) in folds}
        out = Path(eval_root) / stage
        out.mkdir(parents=True, exist_ok=True)
        frames = {}
        for key in ("oof_csv", "oof_scans_csv"):
            if not m.get(key):
                continue
            df = pd.read_csv(_run_file(run_dir, summary, m[key]), dtype={"slice_id": str, "scan_id": str,
                                                                        "patient_id": str})
            frames[key] = df[df["patient_id"].isin(keep)]
        missing = keep - set(frames["oof_csv"]["patient_id"])
        have_folds = sorted({int(assignment[p]) for p in frames["oof_csv"]["patient_id"].unique()})
        if missing:
            raise InputError(f"{summary['name']} / {stage}: no predictions for {len(missing)} patient(s) of folds "
                             f"{folds} (the run tested folds {sorted(set(m.get('folds') or have_folds))})",
                             hint="compare on folds every run tested (--folds)")
        paths = {k: atomic_write_text(out / f"{k[:-4]}.csv", df.to_csv(index=False, float_format="%.6g"))
                 for k, df in frames.items()}
        evaluate_files(paths["oof_csv"], labels if len(labels) > 1 else labels[0], out / "eval",
                       partial_scans=True, scan_predictions=paths.get("oof_scans_csv"), sensitivity=sensitivity,
                       n_boot=n_boot, seed=seed, overwrite=True, plots=False)
        stages[stage] = {**m, **evaluation_summary(out / "eval"), "evaluated_folds": folds}
    return {**summary, "stages": stages, "evaluated_folds": folds}


def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _with_ci(v: Any, ci: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if ci and None not in ci:
        return f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return f"{v:.{digits}f}"


def _count(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.1f}k"


def settings_text(s: dict[str, Any]) -> str:
    """The settings that ran, in a few words (size schedule, epochs, folds, step cap, profile)."""
    sizes = s.get("image_size_per_epoch")
    if sizes:
        steps = [sizes[0], *[b for a, b in itertools.pairwise(sizes) if b != a]]
        size = " → ".join(str(v) for v in steps) + " px"
    else:
        size = f"{s.get('baseline_image_size') or s.get('image_size')} px"
    parts = [size]
    if s.get("epochs"):
        per = f" × {s['epoch_samples']} slices" if s.get("epoch_samples") else ""
        parts.append(f"{s['epochs']} ep{per}")
    folds = s.get("folds") or []
    parts.append(f"folds {','.join(map(str, folds))} of {s.get('n_folds')}")
    if s.get("targets") == "any":
        parts.append("any only†")
    if s.get("tta"):
        parts.append("TTA")
    if s.get("max_steps"):
        parts.append(f"max {s['max_steps']} steps")
    if s.get("profile"):
        parts.append(f"profile {s['profile']}")
    return ", ".join(parts)


def command_text(summary: dict[str, Any]) -> str:
    """The ``ichd experiments run`` command that reproduces the run (its profile, folds, step cap and ``--set``
    overrides as recorded in the summary; ``--out`` left to the default)."""
    import shlex

    s = summary.get("settings", {})
    parts = ["ichd", "experiments", "run", str(summary["name"])]
    if s.get("profile"):
        parts += ["--profile", str(s["profile"])]
    folds = s.get("folds") or []
    if folds and len(folds) != s.get("n_folds"):
        parts += ["--folds", ",".join(map(str, folds))]
    if s.get("max_steps"):
        parts += ["--max-steps", str(s["max_steps"])]
    for key, value in (s.get("overrides") or {}).items():
        text = json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
        parts += ["--set", f"{key}={text}"]
    return "`" + shlex.join(parts) + "`"


def _published_text(published: list[dict[str, Any]]) -> str:
    return "; ".join(f"{p['metric']} {p['value']} ({p['where']}{', ' + p['data'] if p.get('data') else ''})"
                     for p in published) or "—"


def table_rows(summaries: Iterable[dict[str, Any]]) -> list[list[str]]:
    """Table rows (cells as text), one per stage of each summary."""
    rows = []
    for s in summaries:
        for stage, m in s.get("stages", {}).items():
            sl, sc = m.get("slice_any") or {}, m.get("scan_any") or {}
            at05 = sl.get("at_0.5") or {}
            scan_op = sc.get("at_sensitivity") or {}
            cost_train = m.get("train_ms_per_slice")
            cost_infer = m.get("infer_ms_per_slice")
            if stage == "seq":
                cost_train, cost_infer = m.get("seq_train_predict_ms_per_slice"), m.get("embed_ms_per_slice")
            rows.append([
                s["name"], STAGE_LABELS.get(stage, stage), f"{s['method']} ({s['paper']})", (s.get("init") or "").split(";")[0],
                settings_text(s.get("settings", {})),
                _with_ci(m.get("weighted_log_loss"), m.get("weighted_log_loss_ci95"), 4),
                _with_ci(sl.get("auc"), sl.get("auc_ci95")), _with_ci(sc.get("auc"), sc.get("auc_ci95")),
                f"{_num(at05.get('accuracy'))} / {_num(at05.get('sensitivity'))} / {_num(at05.get('specificity'))}",
                f"{_num(scan_op.get('specificity'))} (sens {_num(scan_op.get('sensitivity'))})",
                _count(m.get("parameters")), _num(cost_train, 1), _num(cost_infer, 1), command_text(s),
                _published_text(s.get("published", [])),
            ])
    return rows


HEADER = ["experiment", "stage", "method (paper)", "initial weights", "what ran", "weighted log loss [95% CI]",
          "slice AUC any [95% CI]", "scan AUC any [95% CI]", "slice acc / sens / spec any @0.5",
          "scan spec any @ sens ≥ 0.95", "params", "train ms/slice", "infer ms/slice", "command",
          "paper's own published numbers (their data, not comparable)"]


def comparison_markdown(summaries: list[dict[str, Any]], *, folds: list[int] | None = None) -> str:
    """The whole table with its legend (``folds``: the rows were re-evaluated on those folds' patients)."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n"

    text = line(HEADER) + line(["---"] * len(HEADER))
    for row in table_rows(summaries):
        text += line(row)
    legend = (
        "\nOut-of-fold predictions on the default model's patient folds (benchmarks/results/cnn_multi_256/folds.csv), "
        "evaluated by `ichd evaluate` (95% intervals: patient bootstrap). Scan score: max over slices (sequence "
        "stages: the model's scan output under its scan rule, e.g. RADnet's 3 consecutive slices). The fixed-"
        "sensitivity threshold is chosen on the same out-of-fold predictions, so that specificity is optimistic. "
        "† any only: a binary model; its subtype outputs are the training prevalence, so its weighted log loss "
        "counts the subtypes as a constant guess. Sequence rows: train ms/slice = the sequence model's cross-"
        "validation (fit + predict) per slice, infer ms/slice = embedding the slices with the fold CNNs. The "
        "published column quotes each paper on its own data and protocol; it is never a like-for-like "
        "comparison.\n")
    if folds is not None:
        counts = _eval_counts(summaries)
        legend += (f"\nEvery row is evaluated on the patients of fold(s) {', '.join(map(str, folds))} only "
                   f"(`ichd experiments compare --folds {','.join(map(str, folds))}`): the test set all the runs "
                   f"share{counts}. Training costs and 'what ran' are the whole run's.\n")
    return text + legend


def _eval_counts(summaries: list[dict[str, Any]]) -> str:
    """' (N scans, P with hemorrhage; S slices)' of the first row's evaluation, when known."""
    for s in summaries:
        for m in s.get("stages", {}).values():
            sc, sl = m.get("scan_any") or {}, m.get("slice_any") or {}
            if sc.get("n"):
                return f" ({sc['n']} scans, {sc.get('n_positive')} with hemorrhage; {sl.get('n')} slices)"
    return ""


def write_comparison(run_dirs: list[str | Path], out: str | Path, *, folds: list[int] | None = None) -> Path:
    """Write :func:`comparison_markdown` of the runs' summaries to ``out``. With ``folds``, every run is
    re-evaluated on those folds' patients only (:func:`restrict_to_folds`; evaluations in
    ``<out stem>_eval/<run name>/``), so that runs which trained different folds share one test set."""
    from ichd.utils.files import atomic_write_text

    if not run_dirs:
        raise InputError("no experiment runs given")
    out = Path(out)
    if folds is None:
        summaries = [load_summary(d) for d in run_dirs]
    else:
        root = out.with_name(f"{out.stem}_eval")
        summaries = [restrict_to_folds(d, folds, root / Path(d).name) for d in run_dirs]
    return atomic_write_text(out, comparison_markdown(summaries, folds=folds))
