"""What reading thin-slice series as ~5 mm slabs changes (issue 21 item 3): calls, probabilities and seconds.

Predicts CQ500-CT-0 (0.625 mm; contrast-enhanced, so with ``allow_contrast`` as ``ichd predict --allow-contrast``
does) and ``edge-cases/ge-tilt`` with the shipped default model (CPU, no TTA, 1 thread), once with slabs (the
default) and once without (``--no-slabs``), and writes per run: slices, slabs, scan P(any), the scan call and the
called subtypes, slices at or above the "any" threshold, the flagged slices, P(any) of the most probable slice,
whether contrast and out-of-domain checks flagged it, and predict seconds, to ``OUT/summary.json``.

    NO_ALBUMENTATIONS_UPDATE=1 OMP_NUM_THREADS=1 python benchmarks/slabs_predict.py --out benchmarks/results/slabs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ichd.utils.runinfo import RunInfo


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from ichd.constants import LABELS
    from ichd.inference.evidence import select_flagged
    from ichd.inference.predictor import Predictor
    from ichd.io.reader import read_ct
    from ichd.paths import data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/slabs"))
    ap.add_argument("--model", default="default")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = RunInfo.start("benchmarks/slabs_predict.py", argv)
    data = data_dir()
    predictor = Predictor.load(args.model, device="cpu")
    any_j = LABELS.index("any")
    rows = []
    for name, path, allow in (("CQ500-CT-0", data / "cq500" / "CQ500-CT-0", True),
                              ("ge-tilt", data / "edge-cases" / "ge-tilt", False)):
        for slabs in (True, False):
            series = read_ct(path)[0]
            predictor.slabs = slabs
            t = time.perf_counter()
            pred = predictor.predict_series(series, allow_contrast=allow)
            seconds = time.perf_counter() - t
            flagged = select_flagged(pred, 6)
            rows.append({
                "scan": name, "slabs": slabs, "n_slices": series.n_slices,
                "slice_mm": round(float(series.spacing_mm[0]), 3),
                "n_slabs": len(pred.slabs) if pred.slabs else None,
                "allow_contrast": allow, "contrast_flagged": bool((pred.guards.get("contrast") or {}).get("flagged")),
                "domain_flags": (pred.guards.get("domain") or {}).get("flags"),
                "scan_p_any": round(float(pred.scan_probs[any_j]), 4), "scan_call": pred.scan_call,
                "called": [lab for lab, v in pred.reported_calls.items() if v],
                "slices_at_any_threshold": int((pred.slice_probs[:, any_j] >= pred.thresholds["any"]).sum()),
                "max_slice_p_any": round(float(np.max(pred.slice_probs[:, any_j])), 4),
                "flagged": [[i, lab, round(p, 3)] for i, lab, p in flagged],
                "noise_sd_hu": (pred.guards.get("domain") or {}).get("noise_sd_hu"),
                "predict_s": round(seconds, 2),
                "timing_s": {k: round(float(v), 2) for k, v in pred.timing_s.items()}})
            print(json.dumps(rows[-1]), file=sys.stderr)
    predictor.slabs = True
    summary = {
        "model": {"name": predictor.identity.name, "version": predictor.identity.version},
        **info.finish(torch=torch.__version__, threads=1), "runs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
