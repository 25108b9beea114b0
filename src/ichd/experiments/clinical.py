"""Danilov, Kotik et al.'s per-subtype clinical table: per hemorrhage subtype, at scan (series) level, the positive
and negative counts, accuracy, precision, recall (sensitivity), specificity, AUC and log loss.

Their Table 1 gives ACC/PREC/REC on 401 clinical CT series without naming a threshold; 0.5 (the usual default of
a sigmoid output) is taken as their operating point. Our numbers come from an ``ichd evaluate`` metrics.json
(out-of-fold predictions on our data); theirs are printed beside them, labelled as published, for orientation
only: different patients, scanners and labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ichd.constants import LABELS
from ichd.errors import InputError

#: Danilov et al., Table 1 (401 series from N.N. Burdenko Neurosurgery Center): subtype -> (POS, NEG, ACC, PREC,
#: REC, AUC, LOG_LOSS), as printed.
DANILOV_TABLE_1: dict[str, tuple[int, int, float, float, float, float, float]] = {
    "epidural": (99, 302, 0.828, 0.660, 0.626, 0.762, 0.849),
    "subdural": (83, 318, 0.818, 0.566, 0.518, 0.711, 0.896),
    "subarachnoid": (118, 283, 0.820, 0.829, 0.492, 0.748, 0.881),
    "intraventricular": (137, 264, 0.893, 0.952, 0.723, 0.804, 0.890),
    "intraparenchymal": (188, 213, 0.835, 0.868, 0.766, 0.803, 0.941),
}
#: The operating point taken as theirs (see the module docstring).
OPERATING_POINT = "0.5"


def clinical_rows(metrics: dict[str, Any], level: str = "scan", op: str = OPERATING_POINT) -> list[dict[str, Any]]:
    """One row per subtype (and "any") from an ``ichd evaluate`` metrics dict at ``level`` and operating point
    ``op``."""
    block = metrics.get(level)
    if not block:
        raise InputError(f"the evaluation has no {level}-level metrics", hint="evaluate predictions with scan ids")
    rows = []
    for lab in LABELS:
        c = block["classes"][lab]
        point = c["operating_points"][op]
        rows.append({"label": lab, "pos": c.get("n_positive"), "neg": c.get("n_negative"),
                     "accuracy": point.get("accuracy"), "precision": point.get("precision"),
                     "recall": point.get("sensitivity"), "specificity": point.get("specificity"),
                     "auc": c.get("auc"), "log_loss": c.get("log_loss"), "threshold": point.get("threshold")})
    return rows


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def clinical_markdown(rows: list[dict[str, Any]], *, level: str, stage: str) -> str:
    """The table as Markdown: ours per subtype, then Danilov et al.'s published Table 1."""
    head = ("| subtype | POS | NEG | ACC | PREC | REC (sens) | SPEC | AUC | LOG_LOSS |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    ours = "".join(f"| {r['label']} | {r['pos']} | {r['neg']} | {_f(r['accuracy'])} | {_f(r['precision'])} | "
                   f"{_f(r['recall'])} | {_f(r['specificity'])} | {_f(r['auc'])} | {_f(r['log_loss'])} |\n"
                   for r in rows)
    theirs = "".join(f"| {lab} | {v[0]} | {v[1]} | {v[2]:.3f} | {v[3]:.3f} | {v[4]:.3f} | n/a | {v[5]:.3f} | "
                     f"{v[6]:.3f} |\n" for lab, v in DANILOV_TABLE_1.items())
    return (f"# Per-subtype clinical table (Danilov, Kotik et al., Table 1 layout)\n\n"
            f"## This run: stage `{stage}`, {level} level, threshold {OPERATING_POINT}, out-of-fold predictions\n\n"
            f"{head}{ours}\n"
            f"## Published (Danilov et al., Table 1; their 401 clinical series, not our data)\n\n"
            f"{head}{theirs}\n"
            "Their specificity is not reported. Their model is an average of two se_resnext50_32x4d trained on the "
            "full RSNA 2019 training set; ours is trained on this project's data only.\n")


def write_clinical_table(metrics_json: Path, out: Path, *, stage: str, level: str = "scan") -> Path:
    """Write :func:`clinical_markdown` of an evaluation's ``metrics.json`` to ``out``."""
    from ichd.utils.files import atomic_write_text

    metrics = json.loads(Path(metrics_json).read_text())
    return atomic_write_text(out, clinical_markdown(clinical_rows(metrics, level), level=level, stage=stage))
