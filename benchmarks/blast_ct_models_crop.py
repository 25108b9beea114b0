"""1 vs 3 BLAST-CT models (``--blast-ct-ensemble``) on one small real volume: the cost of an ensemble member.

Usage::

    python benchmarks/blast_ct_models_crop.py benchmarks/results/blast_ct_speed/crop-1-vs-3-models.json

The volume: rsna-series ``ID_7518324893`` (a large IPH), slices 14-21, rows and columns 150-373 (8 x 224 x 224),
segmented by ``ichd.inference.second_reader.BlastCT`` (2 threads, 90^3 blocks, channels_last) with model_1, then with
model_1 + model_3 + model_6. Records wall and CPU seconds, the load average before/after (the machine is shared) and
the volumes. The ratio of the two CPU times is the ensemble's cost factor for a whole scan (``blast_ct_speed.py``
measures whole scans).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ichd.inference.second_reader import BlastCT
from ichd.io import read_ct
from ichd.paths import data_dir

SCAN = "ID_7518324893"
CROP = (slice(14, 22), slice(150, 374), slice(150, 374))


def main(out: Path) -> int:
    (series,) = read_ct(data_dir() / "rsna-series" / "dicom" / SCAN)
    small = dataclasses.replace(series, hu=np.ascontiguousarray(series.hu[CROP]),
                                positions_mm=series.positions_mm[CROP[0]],
                                sop_instance_uids=series.sop_instance_uids[CROP[0]], source_files=None)
    rows = []
    for models in (["model_1"], ["model_1", "model_3", "model_6"]):
        reader = BlastCT(models=models, threads=2)
        load, cpu, wall = os.getloadavg(), time.process_time(), time.perf_counter()
        result = reader.segment(small)
        rows.append({"models": models, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                     "load_before": load, "load_after": os.getloadavg(),
                     "volumes_ml": {k: round(v, 2) for k, v in result.volumes_ml.items()}})
        print(json.dumps(rows[-1]), flush=True)
    record = {"volume": f"{SCAN} slices 14-21, rows/cols 150-373", "shape": list(small.hu.shape), "threads": 2,
              "block": 90, "channels_last": True, "runs": rows,
              "cpu_ratio_3_to_1": rows[1]["cpu_s"] / rows[0]["cpu_s"]}
    out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
