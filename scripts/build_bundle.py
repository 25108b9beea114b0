#!/usr/bin/env python
"""Pack trained checkpoints + their cross-validation evaluation into a model bundle shipped with ichd.

Example (a model trained on CT-ICH and rsna-series)::

    python scripts/build_bundle.py --cnn runs/cnn_multi/foldall/final.pt \\
        --evaluation runs/eval_multi --name multi-effnetlite0 --version 2.0.0 \\
        --training-source ct-ich:all --training-source rsna-series:all \\
        --source-evaluation ct-ich=runs/eval_multi_ctich --source-evaluation rsna-series=runs/eval_multi_rsna \\
        --training "CNN=benchmarks/cv_cnn.sh (configs/cnn_multi.yaml)" --training "..."

``--evaluation`` is the output folder of ``ichd evaluate`` on the same configuration's out-of-fold predictions
(with ``--bootstrap``), which provides the metrics with CIs and the scan-level thresholds. ``--training-source``
says what the weights were fitted on (the card's data, licence and limits sections follow from it; without it the
card says the training data is not recorded). ``--source-evaluation NAME=DIR`` adds one source's CV metrics,
from ``ichd evaluate OOF LABELS... --source NAME --thresholds-from EVALUATION/thresholds.json --out DIR``.
The bundle goes to src/ichd/resources/models/<name>/ unless ``--out`` says otherwise. See
ichd.inference.bundle_build.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ichd.errors import IchdError
from ichd.inference.bundle_build import build_bundle
from ichd.paths import package_resource


def parse_training_source(text: str) -> dict[str, Any]:
    """``NAME``, ``NAME:all`` or ``NAME:ID1,ID2`` -> a ``training_sources`` entry."""
    name, _, patients = text.partition(":")
    name, patients = name.strip(), patients.strip()
    if not name:
        raise ValueError(f"--training-source {text!r}: no source name")
    if patients in ("", "all"):
        return {"source": name, "patients": "all"}
    ids = [p.strip() for p in patients.split(",") if p.strip()]
    if not ids:
        raise ValueError(f"--training-source {text!r}: give 'all' or patient ids after the colon")
    return {"source": name, "patients": ids}


def parse_source_evaluations(items: list[str]) -> dict[str, str]:
    """``NAME=DIR`` items -> {name: folder}."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ValueError(f"--source-evaluation {item!r}: expected NAME=DIR")
        if name.strip() in out:
            raise ValueError(f"--source-evaluation: source {name.strip()!r} given twice")
        out[name.strip()] = folder.strip()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnn", required=True, help="slice CNN checkpoint fitted on all patients")
    ap.add_argument("--seq", default=None, help="sequence checkpoint fitted on all patients (optional)")
    ap.add_argument("--evaluation", required=True, help="`ichd evaluate` output folder of the CV OOF predictions")
    ap.add_argument("--name", required=True)
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--alias", action="append", default=None, help="alias (default: 'default'); repeatable")
    ap.add_argument("--out", default=None, help="bundle folder (default src/ichd/resources/models/NAME)")
    ap.add_argument("--training", action="append", default=[], metavar="KEY=TEXT",
                    help="a line of the model card's training section; repeatable")
    ap.add_argument("--training-source", action="append", default=None, metavar="NAME[:all|:ID1,ID2]",
                    help="a data source the weights were fitted on, with all its patients (default) or the listed "
                         "patient ids; repeatable (e.g. ct-ich:all)")
    ap.add_argument("--source-evaluation", action="append", default=[], metavar="NAME=DIR",
                    help="`ichd evaluate --source NAME --thresholds-from EVALUATION/thresholds.json` output folder "
                         "of one training source's OOF slices; repeatable")
    ap.add_argument("--training-cache", action="append", default=[], metavar="DIR",
                    help="`ichd preprocess` cache folder of the training data: its study/series/slice UIDs (of the "
                         "--training-source sources) go to the bundle's training_uids.json; repeatable")
    ap.add_argument("--limit", action="append", default=[], metavar="TEXT",
                    help="a measured known limit for the model card (listed first); repeatable")
    args = ap.parse_args()
    training = dict(item.split("=", 1) for item in args.training if "=" in item)
    try:
        training_sources = (None if args.training_source is None
                            else [parse_training_source(t) for t in args.training_source])
        source_evaluations = parse_source_evaluations(args.source_evaluation)
    except ValueError as e:
        ap.error(str(e))
    out = args.out or package_resource("resources", "models", args.name)
    try:
        b = build_bundle(out, cnn=args.cnn, sequence=args.seq, evaluation=args.evaluation, name=args.name,
                         version=args.version, aliases=tuple(args.alias or ["default"]), training=training,
                         training_sources=training_sources, source_evaluations=source_evaluations,
                         limits=tuple(args.limit), training_caches=tuple(args.training_cache))
    except IchdError as e:
        print(f"build_bundle: error: {e}", file=sys.stderr)
        return e.exit_code
    sizes = ", ".join(f"{role} {p.stat().st_size / 2**20:.1f} MiB" for role, p in b.files.items())
    print(f"bundle {b.name} {b.version} -> {b.root} ({sizes}); sha256 {b.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
