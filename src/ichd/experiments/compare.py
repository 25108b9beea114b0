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
                _count(m.get("parameters")), _num(cost_train, 1), _num(cost_infer, 1),
                _published_text(s.get("published", [])),
            ])
    return rows


HEADER = ["experiment", "stage", "method (paper)", "initial weights", "what ran", "weighted log loss [95% CI]",
          "slice AUC any [95% CI]", "scan AUC any [95% CI]", "slice acc / sens / spec any @0.5",
          "scan spec any @ sens ≥ 0.95", "params", "train ms/slice", "infer ms/slice",
          "paper's own published numbers (their data, not comparable)"]


def comparison_markdown(summaries: list[dict[str, Any]]) -> str:
    """The whole table with its legend."""
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
    return text + legend


def write_comparison(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write :func:`comparison_markdown` of the runs' summaries to ``out``."""
    from ichd.utils.files import atomic_write_text

    if not run_dirs:
        raise InputError("no experiment runs given")
    return atomic_write_text(out, comparison_markdown([load_summary(d) for d in run_dirs]))
