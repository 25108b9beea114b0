"""The seed's Table 2 ablation re-run on CT-ICH: CNN only vs BiLSTM variants, same patient folds for every row.

Every row reads the same out-of-fold embedding table (``ichd embed CACHE --cnn-run RUN``), so every row uses
the CNN's own 5-fold patient split; the sequence rows differ from the base config only by the ``--set``
overrides shown in their ``command`` column (the exact ``ichd train seq`` call that reproduces the row).

    python benchmarks/seq_ablation.py --config configs/seq_ctich.yaml --embeddings runs/embed_ctich/oof.npz

Writes ``OUT/table.md`` and ``OUT/results.json`` (default OUT = benchmarks/results/seq_ablation) and each
row's run folder (OOF predictions, fold checkpoints) under ``--runs`` (default runs/seq_ablation/<row>).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

#: (row name, description, overrides of the base config). The first row is the CNN alone (no training).
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("cnn_only", "CNN only (OOF probabilities, scan = max)", {}),
    ("lstm_probs", "BiLSTM on CNN probabilities only",
     {"model.use_features": False, "model.probs_input": True, "model.probs_head": False,
      "model.head_init": "random"}),
    ("lstm_pca120", "BiLSTM on PCA120",
     {"selector.method": "pca", "selector.k": 120, "model.probs_head": False, "model.head_init": "random"}),
    ("lstm_pca120_probs", "BiLSTM on PCA120 + probabilities (seed's best)",
     {"selector.method": "pca", "selector.k": 120, "model.probs_head": True}),
    ("lstm_pca192_probs", "BiLSTM on PCA192 + probabilities",
     {"selector.method": "pca", "selector.k": 192, "model.probs_head": True}),
    ("lstm_topstd120_probs", "BiLSTM on top-120 std features + probabilities",
     {"selector.method": "top_std", "selector.k": 120, "model.probs_head": True}),
    ("lstm_wlarge120_probs", "BiLSTM on 120 largest-weight-magnitude features + probabilities",
     {"selector.method": "weight_largest", "selector.k": 120, "model.probs_head": True}),
    ("lstm_wsmall120_probs", "BiLSTM on 120 smallest-weight-magnitude features + probabilities",
     {"selector.method": "weight_smallest", "selector.k": 120, "model.probs_head": True}),
]


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def row_command(config: str, embeddings: str, out: str, overrides: dict[str, Any]) -> str:
    sets = " ".join(f"--set {k}={_fmt_value(v)}" for k, v in overrides.items())
    return f"ichd train seq -c {config} -e {embeddings} -o {out} {sets}".strip()


def cnn_only_row(table: Any, labels: np.ndarray, n_boot: int) -> dict[str, Any]:
    """Metrics of the CNN's own OOF probabilities on the same rows (scan score = max over slices)."""
    from ichd.training.seq import evaluate_predictions, predictions_frames

    groups = table.scan_groups()
    preds = [table.probs[g].astype(np.float64) for g in groups]
    oof, scans = predictions_frames(table, groups, preds, labels, "max", 3)
    return evaluate_predictions(oof, labels[np.concatenate(groups)], scans, n_boot=n_boot)


def cnn_wall_seconds(table: Any) -> float | None:
    """Wall time of the CNN cross-validation that made the table, from its cv_metrics.json when present."""
    paths = [Path(m["path"]) for m in table.meta.get("cnn", {}).values() if "path" in m]
    for p in paths[:1]:
        doc = p.parent.parent / "cv_metrics.json"
        if doc.is_file():
            value = json.loads(doc.read_text()).get("total_wall_seconds")
            return float(value) if value else None
    return None


def _ci(m: dict[str, Any], key: str) -> str:
    lo, hi = m["ci95"].get(key, [None, None])
    d = 4 if "log_loss" in key else 3
    return f"{m[key]:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]" if lo is not None and hi is not None else f"{m[key]:.{d}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| row | weighted log loss [95% CI] | slice any-AUC [95% CI] | scan any-AUC [95% CI] | wall time | "
            "command |\n|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        m = r["metrics"]
        wall = f"{r['seconds']:.0f} s" if r.get("seconds") is not None else "n/a"
        lines.append(f"| {r['description']} | {_ci(m, 'weighted_log_loss')} | {_ci(m, 'slice_auc_any')} | "
                     f"{_ci(m, 'scan_auc_any')} | {wall} | `{r['command']}` |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/seq_ctich.yaml", help="base sequence config")
    ap.add_argument("--embeddings", default=None, help="OOF embedding .npz (default: the config's)")
    ap.add_argument("--labels", default=None, help="labels file (default: the config's)")
    ap.add_argument("--out", default="benchmarks/results/seq_ablation", help="table.md + results.json folder")
    ap.add_argument("--runs", default="runs/seq_ablation", help="per-row run folders")
    ap.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="patient-bootstrap replicates")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--table-only", action="store_true", help="rewrite OUT/table.md from OUT/results.json")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra KEY=VALUE override applied to every sequence row (repeatable)")
    args = ap.parse_args(argv)
    if args.table_only:
        from ichd.utils.files import atomic_write_text

        doc = json.loads((Path(args.out) / "results.json").read_text())
        names = {n: d for n, d, _ in ROWS}
        for r in doc["rows"]:
            r["description"] = names.get(r["name"], r["description"])
        atomic_write_text(Path(args.out) / "table.md", markdown_table(doc["rows"]))
        return 0

    import torch
    import yaml

    from ichd.inference.embed import EmbeddingTable
    from ichd.training.seq import align_labels, load_seq_config, train_seq
    from ichd.utils.files import atomic_write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_seq_config(args.config)
    embeddings = args.embeddings or base.embeddings
    table = EmbeddingTable.load(embeddings)
    labels = align_labels(table, args.labels or base.labels)
    common: dict[str, Any] = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        common[key] = yaml.safe_load(value)
    wanted = set(args.rows.split(",")) if args.rows else None
    results: list[dict[str, Any]] = []
    out = Path(args.out)
    for name, description, overrides in ROWS:
        if wanted is not None and name not in wanted:
            continue
        t0 = time.perf_counter()
        if name == "cnn_only":
            metrics = cnn_only_row(table, labels, args.bootstrap)
            row = {"name": name, "description": description, "metrics": metrics,
                   "seconds": cnn_wall_seconds(table), "command": "ichd train cnn (5 folds) + ichd train merge"}
        else:
            run_dir = f"{args.runs}/{name}"
            ov = {**common, **overrides, "out": run_dir, "name": name}
            cfg = load_seq_config(args.config, {**ov, "embeddings": embeddings})
            res = train_seq(cfg, table=table, labels=labels, n_boot=args.bootstrap)
            row = {"name": name, "description": description, "metrics": res.metrics,
                   "seconds": round(time.perf_counter() - t0, 1),
                   "command": row_command(args.config, embeddings, run_dir, {**common, **overrides})}
        results.append(row)
        m = row["metrics"]
        print(f"{name}: wll {m['weighted_log_loss']:.4f} slice-auc {m['slice_auc_any']:.3f} "
              f"scan-auc {m['scan_auc_any']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        doc = {"config": args.config, "embeddings": embeddings, "embedding_meta": table.meta,
               "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
                          f"{torch.get_num_threads()} threads", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                       time.gmtime()),
               "rows": results}
        cnn = next((r for r in results if r["name"] == "cnn_only"), None)
        seq = [r for r in results if r["name"] != "cnn_only"]
        if cnn and seq:
            best = min(seq, key=lambda r: r["metrics"]["weighted_log_loss"])
            ratio = best["metrics"]["weighted_log_loss"] / cnn["metrics"]["weighted_log_loss"]
            doc["best"] = {"row": best["name"], "ratio_to_cnn_only": ratio, "target": 0.8,
                           "seed_ratio": 0.04989 / 0.06259}
        atomic_write_text(out / "results.json", json.dumps(doc, indent=2, default=str))
        atomic_write_text(out / "table.md", markdown_table(results))
    if "best" in doc:
        b = doc["best"]
        print(f"best: {b['row']} ratio {b['ratio_to_cnn_only']:.3f} (target <= 0.8; seed 0.797)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
