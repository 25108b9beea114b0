"""Frozen-encoder sweep (issue 20): which encoder, size, depth, pooling and head, against extraction cost.

Each row is one ``ichd train frozen`` run of ``--config`` with ``--set`` overrides (one CV repeat unless the
row says more, no final fit), on the same patient folds (repeat 0 = the default model's folds file). The
per-encoder embeddings are cached in the config's ``embeddings_dir``, so a row costs its extraction once; the
table reports the extraction seconds of every encoder it uses (read from the embedding files) and the head's CV
seconds. Rows already finished (``OUT/<row>/metrics.json``) are not run again.

    python benchmarks/frozen_sweep.py --out benchmarks/results/frozen_sweep [--rows NAME,...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ichd.utils.runinfo import RunInfo

#: name -> (cache size, overrides). Sizes other than 256 need `ichd preprocess ... --size N --out cache/multi-N`.
ROWS: dict[str, tuple[int, dict[str, object]]] = {
    "lite0_256_slice": (256, {"head.context": 0}),
    "lite0_256_ctx1": (256, {}),
    "lite0_256_ctx2": (256, {"head.context": 2}),
    "lite0_256_avgmax_ctx1": (256, {"encoder.pool": "avgmax"}),
    "lite0_256_last_avgmax_ctx1": (256, {"encoder.depth": "last_stage", "encoder.pool": "avgmax"}),
    "lite0_256_mlp_ctx1": (256, {"head.kind": "mlp", "head.dropout": 0.3, "optim.l2": 0.001}),
    "lite0_256_ctx1_unbalanced": (256, {"optim.balance": False}),
    "lite0_256_ctx1_l2_0.004": (256, {"optim.l2": 0.004}),
    "lite0_256_ctx1_l2_0.01": (256, {"optim.l2": 0.01}),
    "lite0_256_ctx1_l2_0.2": (256, {"optim.l2": 0.2}),
    "lite0_256_ctx1_rsna_x2": (256, {"data.source_weights": {"rsna-series": 2.0}}),
    "lite0_256_ctx1_rsna_x4": (256, {"data.source_weights": {"rsna-series": 4.0}}),
    "lite0_256_each_window_ctx1": (256, {"encoder.encoders": [{"name": "efficientnet_lite0", "input_size": 256,
                                                              "channels": "each_window"}]}),
    "lite1_256_ctx1": (256, {"encoder.encoders": [{"name": "efficientnet_lite1", "input_size": 256}]}),
    "lite2_256_ctx1": (256, {"encoder.encoders": [{"name": "efficientnet_lite2", "input_size": 256}]}),
    "lite0+1+2_256_ctx1": (256, {"encoder.encoders": [{"name": f"efficientnet_lite{v}", "input_size": 256}
                                                      for v in (0, 1, 2)]}),
    "lite0_384_ctx1": (384, {"encoder.encoders": [{"name": "efficientnet_lite0", "input_size": 384}]}),
    "lite2_384_ctx1": (384, {"encoder.encoders": [{"name": "efficientnet_lite2", "input_size": 384}]}),
    "lite0_512_ctx1": (512, {"encoder.encoders": [{"name": "efficientnet_lite0", "input_size": 512}]}),
}


def _extraction_seconds(emb_dir: Path, encoders: list[dict[str, object]]) -> float | None:
    """Seconds the embedding files of ``encoders`` took, read from the files whose stored key matches each
    encoder exactly (name, size, channel mode, flip averaging) on a plain DICOM-HU cache (no simulated display
    window, no crop)."""
    import numpy as np

    total = 0.0
    for e in encoders:
        match = None
        for f in sorted(emb_dir.glob(f"{e['name']}-{e['input_size']}-*.npz"), key=lambda f: f.stat().st_mtime):
            with np.load(f, allow_pickle=False) as z:
                key = json.loads(str(z["key"]))
                if (key.get("channels", "windows") == e.get("channels", "windows")
                        and bool(key.get("flip", False)) == bool(e.get("flip", False))
                        and "simulate_window" not in key["preprocess"] and "crop" not in key["preprocess"]):
                    match = float(z["seconds"])
        if match is None:
            return None
        total += match
    return round(total, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/frozen_lite0.yaml")
    ap.add_argument("--out", default="benchmarks/results/frozen_sweep")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: every row)")
    ap.add_argument("--repeats", type=int, default=1, help="CV repeats per row (fold seeds of the config)")
    args = ap.parse_args(argv)
    info = RunInfo.start("benchmarks/frozen_sweep.py", argv)
    from ichd.training.frozen import load_frozen_config, train_frozen

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [r for r in args.rows.split(",") if r] or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; rows: {', '.join(ROWS)}")
    table = []
    for name in names:
        size, sets = ROWS[name]
        row_dir = out / name
        done = row_dir / "metrics.json"
        if not done.is_file():
            base = load_frozen_config(args.config)
            overrides = {"out": str(row_dir), "final": False, "data.cache": f"cache/multi-{size}",
                         "data.fold_seeds": base.data.fold_seeds[: args.repeats], **sets}
            t0 = time.time()
            train_frozen(load_frozen_config(args.config, overrides))
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        m = json.loads(done.read_text())
        cfg = load_frozen_config(row_dir / "config.yaml")
        encoders = [{"name": e.name, "input_size": e.input_size, "channels": e.channels, "flip": e.flip}
                    for e in cfg.encoder.encoders]
        rep = m["repeats"]
        per_src = [r.get("per_source", {}) for r in rep]
        fold_aucs = [f["auc/any"] for r in rep for f in r["per_fold"] if f.get("auc/any") is not None]
        table.append({
            "row": name, "encoder": m["encoder"], "head": m["head"], "features": m["n_features"],
            "repeats": len(rep),
            "slice_auc_any": sum(r["pooled"]["auc/any"] for r in rep) / len(rep),
            "scan_auc_any": sum(r["pooled"]["scan/auc/any"] for r in rep) / len(rep),
            "wll": sum(r["pooled"]["weighted_log_loss"] for r in rep) / len(rep),
            "slice_head_wll": sum(r["slice_head"]["weighted_log_loss"] for r in rep) / len(rep),
            "per_fold_mean_auc_any": sum(fold_aucs) / len(fold_aucs) if fold_aucs else None,
            "rsna_slice_auc": _mean([p.get("rsna-series", {}).get("auc/any") for p in per_src]),
            "rsna_scan_auc": _mean([p.get("rsna-series", {}).get("scan/auc/any") for p in per_src]),
            "ctich_slice_auc": _mean([p.get("ct-ich", {}).get("auc/any") for p in per_src]),
            "ctich_scan_auc": _mean([p.get("ct-ich", {}).get("scan/auc/any") for p in per_src]),
            "extract_s": _extraction_seconds(Path(cfg.embeddings_dir), encoders), "cv_s": m["cv_seconds"],
        })
    meta = info.finish()
    (out / "sweep.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=2) + "\n")
    lines = [("| row | encoder | head | features | rsna-series slice / scan any-AUC | CT-ICH slice / scan any-AUC | "
              "pooled slice any-AUC (per-fold mean) | weighted log loss (slice head) | extraction s | CV s |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['row']} | {r['encoder']} | {r['head']} | {r['features']} | {_f(r['rsna_slice_auc'])} / "
                     f"{_f(r['rsna_scan_auc'])} | {_f(r['ctich_slice_auc'])} / {_f(r['ctich_scan_auc'])} | "
                     f"{_f(r['slice_auc_any'])} ({_f(r['per_fold_mean_auc_any'])}) | {_f(r['wll'])} "
                     f"({_f(r['slice_head_wll'])}) | {r['extract_s']} | {r['cv_s']} |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _mean(values: list[object]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def _f(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "n/a"


if __name__ == "__main__":
    raise SystemExit(main())
