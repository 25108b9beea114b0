"""Integration test of ``ichd ingest --json`` on every set in ../shared/data (the issue's "done when")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ichd.cli.main import run

# (path under the data folder, extra args, expected series count, expected slices per series)
CASES = [
    ("cq500", [], 2, [238, 1]),
    ("edge-cases/ge-tilt", [], 1, [8]),
    ("edge-cases/pydicom-693", [], 1, [1]),
    ("rsna-samples", [], 10, [1] * 10),
    ("hu-slices", ["--allow-secondary-capture"], 26, [1] * 26),
    ("ct-ich/brain/050", [], 1, None),
]


@pytest.mark.parametrize(("rel", "args", "n_series", "slices"), CASES, ids=[c[0] for c in CASES])
def test_ingest_json_on_shared_data(data_root: Path, capsys: pytest.CaptureFixture[str], rel: str,
                                    args: list[str], n_series: int, slices: list[int] | None) -> None:
    assert run(["-q", "ingest", str(data_root / rel), "--json", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_series"] == n_series == len(out["series"])
    for s in out["series"]:
        for key in ("study_instance_uid", "series_instance_uid", "n_slices", "spacing_mm", "tilt_deg", "gaps",
                    "duplicates", "warnings"):
            assert key in s
    if slices is not None:
        assert sorted(s["n_slices"] for s in out["series"]) == sorted(slices)
    if rel == "cq500":
        big = next(s for s in out["series"] if s["n_slices"] == 238)
        assert big["tilt_deg"] == 8.5 and len(big["gaps"]) == 1


def test_ingest_hu_slices_without_flag_exits_2(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-q", "ingest", str(data_root / "hu-slices")]) == 2
    err = capsys.readouterr().err
    assert "--allow-secondary-capture" in err and len(err.strip().splitlines()) == 1
