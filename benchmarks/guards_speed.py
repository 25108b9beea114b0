"""Seconds of the input guards per series, before and after the speed-up (issue 21), side by side.

The "before" code is ``preprocessing/head_mask.py`` and ``preprocessing/contrast.py`` as of ``--ref`` (default
86e229c, the commit before the speed-up), taken with ``git show`` into a temporary folder and imported under other
names; "after" is this checkout: the same two steps (head masks + contrast, ``after_mask_contrast``) and the whole
:func:`ichd.inference.guards.series_guards` (with the out-of-domain measures, ``after_series_guards``). Each series is
timed with the three variants interleaved (the machine's load changes), ``--repeats`` times, best time kept; the
masks and contrast measures of both versions are compared (they must be identical).

    python benchmarks/guards_speed.py --out benchmarks/results/guards_speed
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ichd.utils.runinfo import RunInfo

MODULES = ("head_mask", "contrast")


def _old_modules(ref: str, folder: Path) -> dict[str, object]:
    """The ``MODULES`` of ``ref`` imported as ``old_<name>`` (contrast's import of head_mask points at the old one)."""
    out: dict[str, object] = {}
    for name in MODULES:
        text = subprocess.run(["git", "show", f"{ref}:src/ichd/preprocessing/{name}.py"], check=True,
                              capture_output=True, text=True).stdout
        text = text.replace("from ichd.preprocessing.head_mask import", "from old_head_mask import")
        path = folder / f"old_{name}.py"
        path.write_text(text, encoding="utf-8")
    sys.path.insert(0, str(folder))
    for name in MODULES:
        spec = importlib.util.spec_from_file_location(f"old_{name}", folder / f"old_{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[f"old_{name}"] = mod
        spec.loader.exec_module(mod)
        out[name] = mod
    return out


def main(argv: list[str] | None = None) -> int:
    from ichd.inference.guards import pixel_spacing, series_guards
    from ichd.io.reader import read_ct
    from ichd.paths import data_dir
    from ichd.preprocessing.contrast import measure_contrast
    from ichd.preprocessing.head_mask import head_mask

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="86e229c", help="git commit of the 'before' code")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/guards_speed"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    info = RunInfo.start("benchmarks/guards_speed.py", argv)
    data = data_dir()
    paths = sorted((data / "rsna-series" / "dicom").iterdir()) + [data / "cq500" / "CQ500-CT-0"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = _old_modules(args.ref, Path(tmp))
        for path in paths:
            series = read_ct(path)[0]
            sp = pixel_spacing(series)
            best = {"before": np.inf, "after_mask_contrast": np.inf, "after_series_guards": np.inf}
            same = True
            for _ in range(args.repeats):
                t = time.perf_counter()
                m0 = old["head_mask"].head_mask(series.hu, sp)  # type: ignore[attr-defined]
                c0 = old["contrast"].measure_contrast(series.hu, sp, m0)  # type: ignore[attr-defined]
                best["before"] = min(best["before"], time.perf_counter() - t)
                t = time.perf_counter()
                m1 = head_mask(series.hu, sp)
                c1 = measure_contrast(series.hu, sp, m1)
                best["after_mask_contrast"] = min(best["after_mask_contrast"], time.perf_counter() - t)
                t = time.perf_counter()
                series_guards(series)
                best["after_series_guards"] = min(best["after_series_guards"], time.perf_counter() - t)
                same = same and bool((m0 == m1).all()) and c0.to_dict() == c1.to_dict()
            rows.append({"scan": path.name, "n_slices": series.n_slices, "identical": same,
                         **{k: round(v, 3) for k, v in best.items()}})
            print(json.dumps(rows[-1]), file=sys.stderr)
    rsna = [r for r in rows if r["scan"] != "CQ500-CT-0"]
    summary = {
        "ref": args.ref, "identical_everywhere": all(r["identical"] for r in rows),
        "rsna_series_median_s": {k: float(np.median([r[k] for r in rsna]))
                                 for k in ("before", "after_mask_contrast", "after_series_guards")},
        "rsna_series_median_slices": float(np.median([r["n_slices"] for r in rsna])),
        "cq500_ct0_s": {k: v for k, v in rows[-1].items() if k not in ("scan", "identical")},
        **info.finish(), "series": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "series"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
