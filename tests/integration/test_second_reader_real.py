"""The BLAST-CT second reader on real rsna-series CT (slow set: each test runs BLAST-CT for about a minute on 2
cores). Needs the blast-ct extra and the weights in ``<ICHD_DATA>/../models/blast-ct`` (or ``$ICHD_BLAST_CT``).

- the in-memory segmentation (``ichd.inference.second_reader``, 90^3 blocks) gives the same label map, voxel for
  voxel, as BLAST-CT's own ``run_inference`` on ``write_nifti``'s file of the same volume;
- ``ichd predict --second-reader blast-ct --format json,html,dicom`` end to end on real DICOM slices (CQ500-CT-0:
  rsna-series' UIDs are not valid DICOM UIDs, so no SEG can reference them): the JSON block, the HTML section, and
  a DICOM SEG that dciodvfy accepts and highdicom reads back with the JSON's volumes; on rsna-series the SEG is
  left out with a ``seg_not_written`` warning;
- ``ichd serve`` with the second reader configured: the job reports its progress while BLAST-CT runs, the study
  summary carries the volumes, and the slice PNG draws the segmentation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SCAN = "ID_7518324893"  # rsna-series, positive: a large intraparenchymal hemorrhage
SLICES = slice(14, 22)  # 8 slices through the bleed


@pytest.fixture(scope="module")
def models_dir(data_root: Path) -> Path:
    pytest.importorskip("blast_ct", reason="the blast-ct extra is not installed")
    from ichd.inference.second_reader import MODELS_ENV

    folder = Path(os.environ.get(MODELS_ENV) or data_root.parent / "models" / "blast-ct")
    if not (folder / "model_1.pt").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"BLAST-CT weights {folder / 'model_1.pt'} are missing in CI")
        pytest.skip(f"BLAST-CT weights not found in {folder}")
    return folder


@pytest.fixture(scope="module")
def scan_dir(data_root: Path) -> Path:
    path = data_root / "rsna-series" / "dicom" / SCAN
    if not path.is_dir():
        pytest.skip(f"{path} not in the data folder")
    return path


@pytest.fixture(scope="module")
def cq500_subset(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 consecutive slices (0.62 mm) of CQ500-CT-0, a real series with valid DICOM UIDs."""
    from ichd.io import read_ct

    src = data_root / "cq500" / "CQ500-CT-0"
    if not src.is_dir():
        pytest.skip(f"{src} not in the data folder")
    (series,) = read_ct(src)
    out = tmp_path_factory.mktemp("cq500")
    for name in series.source_files[120:160]:
        shutil.copy2(src / name, out / Path(name).name)
    return out


@pytest.fixture(scope="module")
def dicom_subset(scan_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of 8 consecutive slices of the scan (a smaller real DICOM series)."""
    from ichd.io import read_ct

    (series,) = read_ct(scan_dir)
    out = tmp_path_factory.mktemp("subset")
    for name in series.source_files[SLICES]:
        shutil.copy2(scan_dir / name, out / Path(name).name)
    return out


def test_same_labels_as_blast_cts_own_inference(scan_dir: Path, models_dir: Path, tmp_path: Path):
    import blast_ct
    import pandas as pd
    import SimpleITK as sitk
    import torch
    from blast_ct.inference import run_inference

    from ichd.inference.second_reader import BlastCT
    from ichd.io import read_ct
    from ichd.io.nifti import write_nifti

    (series,) = read_ct(scan_dir)
    # a smaller real volume: 8 slices through the bleed, the central 224 x 224 pixels
    crop = (SLICES, slice(150, 374), slice(150, 374))
    small = dataclasses.replace(series, hu=np.ascontiguousarray(series.hu[crop]),
                                positions_mm=series.positions_mm[SLICES],
                                sop_instance_uids=series.sop_instance_uids[SLICES], source_files=None)
    reading = BlastCT(models_dir, "model_1", threads=2).segment(small)
    assert reading.labels.shape == small.hu.shape
    assert reading.volumes_ml["iph"] > 10.0  # the bleed is found

    nifti = write_nifti(small, tmp_path / "small.nii.gz")
    pd.DataFrame({"id": ["small"], "image": [str(nifti)]}).to_csv(tmp_path / "test.csv", index=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    try:
        run_inference(str(tmp_path / "job"), str(tmp_path / "test.csv"),
                      str(Path(blast_ct.__file__).parent / "data" / "config.json"), "cpu",
                      str(models_dir / "model_1.pt"), write_prob_maps=False, do_localisation=False,
                      save_atlas_and_brain_mask_native_space=False, num_reg_runs=1, overwrite=True, native_space=True)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    predictions = tmp_path / "job" / "predictions"
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / "small_prediction.nii.gz"))).astype(np.uint8)
    np.testing.assert_array_equal(reading.labels, reference)
    row = pd.read_csv(predictions / "prediction.csv").iloc[0]
    for name in ("iph", "eah", "oedema", "ivh"):
        assert round(reading.volumes_ml[name], 2) == pytest.approx(row[f"{name}_predicted_volume_ml"], abs=1e-9)


def test_predict_cli_with_the_second_reader(cq500_subset: Path, models_dir: Path, test_bundle: Path,
                                            tmp_path: Path):
    import highdicom as hd
    import pydicom

    from ichd.cli.main import run
    from ichd.inference.report_json import validate_result

    out = tmp_path / "out"
    assert run(["-q", "predict", str(cq500_subset), "--model", str(test_bundle), "--out", str(out), "--format",
                "json,html,dicom", "--second-reader", "blast-ct", "--blast-ct-models", str(models_dir),
                "--threads", "2", "--allow-contrast"]) == 0
    data = json.loads((out / "prediction.json").read_text())
    validate_result(data)
    block = data["second_reader"]
    assert block["name"] == "blast-ct" and [m["file"] for m in block["models"]] == ["model_1.pt"]
    assert block["hemorrhage_ml"] == pytest.approx(sum(block["volumes_ml"][c] for c in ("iph", "eah", "ivh")),
                                                   abs=0.02)
    assert block["seg"]["file"] == "dicom/seg.dcm"
    codes = [w["code"] for w in data["warnings"]]
    assert "seg_not_written" not in codes and "seg_new_frame_of_reference" in codes  # CQ500 has no FrameOfReferenceUID
    html = (out / "report.html").read_text()
    assert "Second reader: BLAST-CT" in html and "BLAST-CT labels" in html
    # the SEG: valid, referencing the source slices, and the same voxels as the JSON's volumes
    seg_path = out / "dicom" / "seg.dcm"
    if shutil.which("dciodvfy") is not None:
        report = subprocess.run(["dciodvfy", str(seg_path)], check=False, capture_output=True, text=True,
                                timeout=120)
        errors = [x for x in (report.stdout + report.stderr).splitlines() if x.startswith("Error")]
        assert not errors, report.stderr
    elif os.environ.get("CI") == "true":
        pytest.fail("dciodvfy is missing in CI")
    seg = hd.seg.segread(seg_path)
    uids = [s["sop_instance_uid"] for s in data["slices"]]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    assert seg.SeriesInstanceUID == block["seg"]["series_instance_uid"]
    assert seg.StudyInstanceUID == data["study_instance_uid"]
    assert sorted(np.flatnonzero(np.isin(labels, [1, 2, 4]).any(axis=(1, 2))).tolist()) == \
        block["slices_with_hemorrhage"]
    # the SEG's voxels give the JSON's volumes (voxel volume from the source geometry)
    first = pydicom.dcmread(next(cq500_subset.iterdir()), stop_before_pixels=True)
    z = np.diff([s["z_mm"] for s in data["slices"]])
    voxel_ml = float(first.PixelSpacing[0]) * float(first.PixelSpacing[1]) * float(np.median(z)) / 1000.0
    for k, name in enumerate(("iph", "eah", "oedema", "ivh"), start=1):
        assert (labels == k).sum() * voxel_ml == pytest.approx(block["volumes_ml"][name], abs=0.01 + 0.01 * block[
            "volumes_ml"][name])


def test_rsna_series_uids_get_no_seg(dicom_subset: Path, models_dir: Path, test_bundle: Path, tmp_path: Path):
    """rsna-series' UIDs (``ID_...``) are not DICOM UIDs: the volumes are reported, the SEG is left out, said why."""
    from ichd.cli.main import run

    out = tmp_path / "out"
    assert run(["-q", "predict", str(dicom_subset), "--model", str(test_bundle), "--out", str(out), "--format",
                "json,dicom", "--second-reader", "blast-ct", "--blast-ct-models", str(models_dir),
                "--threads", "2"]) == 0
    data = json.loads((out / "prediction.json").read_text())
    assert data["second_reader"]["volumes_ml"]["iph"] > 10.0 and "seg" not in data["second_reader"]
    notes = [w["message"] for w in data["warnings"] if w["code"] == "seg_not_written"]
    assert notes == ["no DICOM SEG of the second reader: the input's UIDs are not valid DICOM UIDs"]
    assert not (out / "dicom" / "seg.dcm").exists()


def test_serve_with_the_second_reader(dicom_subset: Path, models_dir: Path, test_bundle: Path, tmp_path: Path):
    from fastapi.testclient import TestClient

    from ichd.service.app import create_app
    from ichd.service.config import ServiceConfig
    from ichd.service.runner import StudyService

    token = "test-token-0123456789abcdef"
    auth = {"Authorization": f"Bearer {token}"}
    service = StudyService(ServiceConfig(data_dir=tmp_path / "data", model=str(test_bundle), token=token,
                                         device="cpu", poll_interval_s=0.05, decode_workers=1,
                                         second_reader="blast-ct", blast_ct_models=models_dir))
    with TestClient(create_app(service)) as client:
        files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(dicom_subset.iterdir())]
        job_id = client.post("/v1/studies", files=files, headers=auth).json()["job_id"]
        seen = []
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
            if job["progress"] is not None:
                seen.append(job["progress"])
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert job["status"] == "done", job
        assert job["progress"] is None  # only while running
        assert seen and seen[-1]["stage"] == "second_reader" and 0 < seen[-1]["done"] <= seen[-1]["total"]
        study = client.get(f"/v1/studies/{job['study_id']}", headers=auth).json()
        second = study["series"][0]["second_reader"]
        assert second["name"] == "blast-ct" and second["volumes_ml"]["iph"] > 10.0
        result = client.get(f"/v1/studies/{job['study_id']}/result", headers=auth).json()
        index = result["second_reader"]["slices_with_hemorrhage"][0]
        plain = client.get(f"/v1/studies/{job['study_id']}/slices/{index}.png", headers=auth)
        drawn = client.get(f"/v1/studies/{job['study_id']}/slices/{index}.png?seg=true", headers=auth)
        assert plain.status_code == drawn.status_code == 200 and plain.content != drawn.content
