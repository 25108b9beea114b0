"""JPG-windowed vs DICOM-HU input (Caceres et al.'s comparison, issue 13): which input wins where.

The two experiment rows ``jpg_vs_dicom_ctich_jpg`` (CT-ICH, JPG windows) and ``jpg_vs_dicom_rsna_dicom``
(rsna-series, scanner DICOM in HU) train the same network with the same schedule, each on its own source's
patients of the default model's folds. Each is evaluated twice:

* **own source**: its out-of-fold predictions (``ichd experiments run``'s evaluation), and
* **other source**: its fold model(s) (``--fold-models``, default fold 0's; several are averaged) over every slice
  of the other source. No patient of the other source is in any fold's training data, so this is a clean external
  test of a model trained on one input kind and applied to the other.

    python benchmarks/jpg_vs_dicom.py --runs runs/compare/jpg_vs_dicom_ctich_jpg runs/compare/jpg_vs_dicom_rsna_dicom \\
        --out benchmarks/results/compare/jpg_vs_dicom

Writes OUT/<run>_on_<source>/{predictions.csv, eval/} and OUT/table.md (+ table.json). The cache is the one the
runs trained on (their ``cnn.data.cache``), which holds both sources.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _run_info(run: Path) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text())
    settings = summary["settings"]
    return {"name": summary["name"], "cache": settings["cache"], "labels": settings["labels"],
            "folds": settings["folds"], "stage": summary["stages"]["cnn"]}


def _other_labels(own: list[str], every: list[str]) -> list[str]:
    rest = [f for f in every if f not in own]
    if len(rest) != 1:
        raise SystemExit(f"error: cannot tell the other source: {own} of {every}")
    return rest


def cross_source(run: Path, other_labels: str, out: Path, n_boot: int, fold_models: list[int]) -> dict[str, Any]:
    """Predict the other source's slices with the run's ``fold_models`` (their mean) and evaluate them."""
    import pandas as pd

    from ichd.constants import LABELS
    from ichd.evaluation.report import evaluate_files
    from ichd.experiments.summary import evaluation_summary
    from ichd.inference.embed import NO_FOLD, embed_cache, read_fold_assignment, run_checkpoints
    from ichd.preprocessing.cache import open_cache
    from ichd.training.cnn import resolve_labels_path

    info = _run_info(run)
    assignment = read_fold_assignment(run / "cnn" / "folds.csv")
    checkpoints = run_checkpoints(run / "cnn", {str(k): k for k in fold_models})
    labels_path = resolve_labels_path(other_labels)
    cache = open_cache(info["cache"])
    # the run's folds hold only its own source's patients: every other scan of the cache is the other source
    scans = [s for s in cache.scan_ids if str(cache.series[s]["patient_id"]) not in assignment]
    if not scans:
        raise SystemExit(f"error: the cache {info['cache']} holds no scan of {other_labels}")
    t0 = time.perf_counter()
    probs = None
    table = None
    for k, ckpt in sorted(checkpoints.items()):
        print(f"[jpg-vs-dicom] {info['name']}: fold {k} model on {len(scans)} scans of {other_labels}", flush=True)
        table = embed_cache(info["cache"], {NO_FOLD: ckpt}, scan_ids=scans)
        probs = table.probs if probs is None else probs + table.probs
    assert table is not None and probs is not None
    seconds = time.perf_counter() - t0
    probs = probs / len(checkpoints)
    pred = pd.DataFrame({"slice_id": table.slice_id, "scan_id": table.scan_id, "patient_id": table.patient_id,
                         "slice_index": table.slice_index})
    for j, name in enumerate(LABELS):
        pred[name] = probs[:, j]
    out.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out / "predictions.csv", index=False, float_format="%.6g")
    evaluate_files(out / "predictions.csv", labels_path, out / "eval", partial_scans=True, n_boot=n_boot,
                   overwrite=True, plots=False)
    result = evaluation_summary(out / "eval")
    result.update({"slices": len(pred), "scans": len(scans), "fold_models": sorted(checkpoints),
                   "ms_per_slice_per_model": 1000 * seconds / len(checkpoints) / len(table)})
    return result


def _cell(m: dict[str, Any], level: str) -> str:
    e = m.get(f"{level}_any") or {}
    if e.get("auc") is None:
        return "n/a"
    ci = e.get("auc_ci95") or [None, None]
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if None not in ci else ""
    return f"{e['auc']:.3f}{ci_text} (n={e.get('n')}, {e.get('n_positive')} pos.)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs=2, type=Path, required=True,
                   help="the two experiment run folders (JPG row and DICOM row)")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient-bootstrap replicates (default 1000)")
    p.add_argument("--fold-models", default="0",
                   help="fold models averaged on the other source, comma-separated (default 0: one model, trained "
                        "on 4/5 of its source; 0,1,2,3,4 costs 5x the CPU time)")
    args = p.parse_args(argv)
    for run in args.runs:
        if not (run / "summary.json").is_file():
            print(f"error: {run} has no summary.json: run `ichd experiments run` for it first", file=sys.stderr)
            return 2
    try:
        fold_models = [int(v) for v in args.fold_models.split(",") if v.strip()]
    except ValueError:
        print(f"error: --fold-models {args.fold_models!r} must be fold numbers, e.g. 0 or 0,1", file=sys.stderr)
        return 2
    infos = [_run_info(r) for r in args.runs]
    every = sorted({f for i in infos for f in i["labels"]})
    rows = []
    for run, info in zip(args.runs, infos):
        own = info["stage"]
        other = _other_labels(info["labels"], every)[0]
        cross = cross_source(run, other, args.out / f"{info['name']}_on_{Path(other).parts[0]}", args.bootstrap,
                             fold_models)
        rows.append({"run": info["name"], "trained_on": info["labels"], "own": own, "other_source": other,
                     "other": cross})
    lines = ["| model (trained on) | evaluated on | weighted log loss | slice AUC any [95% CI] | scan AUC any [95% CI] |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        for where, m in ((f"{', '.join(r['trained_on'])} (out-of-fold)", r["own"]),
                         ((f"{r['other_source']} (fold model(s) {r['other']['fold_models']}; none of its "
                           f"patients in training)"), r["other"])):
            wll = m.get("weighted_log_loss")
            lines.append(f"| {r['run']} | {where} | {'n/a' if wll is None else f'{wll:.4f}'} | "
                         f"{_cell(m, 'slice')} | {_cell(m, 'scan')} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "table.json").write_text(json.dumps(rows, indent=2, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
