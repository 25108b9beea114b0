"""``ichd preprocess --scheduler`` on a real two-process Dask cluster: the cache equals the single-process one byte
for byte, and a run resumed after lost work redoes only the lost units."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from ichd.cli.main import run
from ichd.preprocessing.cache import build_cache
from ichd.preprocessing.config import PreprocessConfig

distributed = pytest.importorskip("distributed")

RSNA_SERIES = ("ID_5f8484c3e0", "ID_02033fb12e", "ID_0ab5820b2a")  # the RLE one and two JPEG-LS ones
PATIENTS = "49,84"
SIZE = "48"


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c:
        yield c


@pytest.fixture(scope="module")
def inputs(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A folder of 3 RSNA series (linked files; one unit per series) and the CT-ICH root (2 patients)."""
    rsna = tmp_path_factory.mktemp("inputs") / "rsna"
    for series in RSNA_SERIES:
        (rsna / series).mkdir(parents=True)
        for f in (data_root / "rsna-series" / "dicom" / series).iterdir():
            os.symlink(f.resolve(), rsna / series / f.name)
    return [str((data_root / "ct-ich").resolve()), str(rsna)]


def _args(inputs: list[str], out: Path, *extra: str) -> list[str]:
    return ["-q", "preprocess", *inputs, "--out", str(out), "--size", SIZE, "--patients", PATIENTS, *extra]


@pytest.fixture(scope="module")
def reference(inputs: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "cache"
    assert run(_args(inputs, out, "--workers", "1")) == 0
    return out


def _assert_same_cache(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in (a / "series").iterdir())
    assert files_a == sorted(p.relative_to(b) for p in (b / "series").iterdir())
    assert len(files_a) == 5
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "slices.csv").read_bytes() == (b / "slices.csv").read_bytes()
    # the manifest holds no timing fields: it is equal as a whole (same units, series, order)
    assert json.loads((a / "manifest.json").read_text()) == json.loads((b / "manifest.json").read_text())


def test_dask_cache_equals_single_process(cluster: distributed.LocalCluster, inputs: list[str], reference: Path,
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cache"
    assert run(_args(inputs, out, "--scheduler", cluster.scheduler_address)) == 0
    assert "wrote 5 series" in capsys.readouterr().out
    _assert_same_cache(reference, out)
    assert run(_args(inputs, out, "--scheduler", cluster.scheduler_address)) == 0  # nothing left to do
    assert "wrote 0 series (0 slices), skipped 5 input(s)" in capsys.readouterr().out


def test_dask_resume_redoes_only_lost_units(cluster: distributed.LocalCluster, inputs: list[str], reference: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "cache"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    lost_file, unrecorded = manifest["series"][1], manifest["series"][3]
    # a lost shard (its record is dropped when the run starts) ...
    (out / lost_file["file"]).unlink()
    # ... and a unit written but not yet recorded when the run was killed (the manifest is flushed every 10 s)
    manifest["series"].remove(unrecorded)
    manifest["inputs"].remove(unrecorded["input"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    slices = pd.read_csv(out / "slices.csv", dtype=str)
    slices[slices["scan_id"] != unrecorded["scan_id"]].to_csv(out / "slices.csv", index=False)
    untouched = {p.name: p.stat().st_mtime_ns for p in (out / "series").iterdir()
                 if p.name != Path(unrecorded["file"]).name}

    broken = tmp_path / "broken"  # a unit that fails on its worker: recorded as failed, the others go on
    broken.mkdir()
    (broken / "x.dcm").write_bytes(b"not dicom")

    summary = build_cache([*inputs, broken], out, PreprocessConfig(image_size=int(SIZE)), patients=[49, 84],
                          scheduler=cluster.scheduler_address)
    assert (summary.written, summary.skipped_inputs) == (2, 3)
    assert [where for where, _ in summary.failed] == [str(broken)]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "series").iterdir() if p.name in untouched} == untouched
    _assert_same_cache(reference, out)


def test_dask_workers_starts_and_closes_a_local_cluster(data_root: Path, reference: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cache"
    assert run(["-q", "preprocess", str(data_root / "ct-ich"), "--out", str(out), "--size", SIZE, "--patients", "49",
                "--dask-workers", "1"]) == 0
    assert "wrote 1 series" in capsys.readouterr().out
    assert (out / "series" / "ctich-049.npy").read_bytes() == (reference / "series" / "ctich-049.npy").read_bytes()
