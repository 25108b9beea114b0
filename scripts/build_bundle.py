#!/usr/bin/env python
"""Pack trained checkpoints + their cross-validation evaluation into a model bundle shipped with ichd.

Example (the shipped default model)::

    python scripts/build_bundle.py --cnn runs/cnn_ctich/foldall/final.pt --seq runs/seq_ctich/all/final.pt \\
        --evaluation runs/eval_default --name ctich-lite0-bilstm --version 1.0.0 \\
        --training "CNN=benchmarks/cv_cnn.sh (configs/cnn_ctich.yaml)" --training "..."

``--evaluation`` is the output folder of ``ichd evaluate`` on the same configuration's out-of-fold predictions
(with ``--bootstrap``), which provides the metrics with CIs and the scan-level thresholds. The bundle goes to
src/ichd/resources/models/<name>/ unless ``--out`` says otherwise. See ichd.inference.bundle_build.
"""

from __future__ import annotations

import argparse
import sys

from ichd.errors import IchdError
from ichd.inference.bundle_build import build_bundle
from ichd.paths import package_resource


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
    args = ap.parse_args()
    training = dict(item.split("=", 1) for item in args.training if "=" in item)
    out = args.out or package_resource("resources", "models", args.name)
    try:
        b = build_bundle(out, cnn=args.cnn, sequence=args.seq, evaluation=args.evaluation, name=args.name,
                         version=args.version, aliases=tuple(args.alias or ["default"]), training=training)
    except IchdError as e:
        print(f"build_bundle: error: {e}", file=sys.stderr)
        return e.exit_code
    sizes = ", ".join(f"{role} {p.stat().st_size / 2**20:.1f} MiB" for role, p in b.files.items())
    print(f"bundle {b.name} {b.version} -> {b.root} ({sizes}); sha256 {b.sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
