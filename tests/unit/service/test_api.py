"""The HTTP API end to end with the tiny test model: upload (zip and multipart) -> job -> done -> the same result
as ``ichd predict``; report, SR, slice PNGs, list, delete, JSON errors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ichd.constants import LABELS
from ichd.testing.factories import make_ct_series, uid, write_series

N_SLICES = 4
SIZE = 48


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, service_bundle: Path, h: Any):
    """One running service with a study uploaded as a zip and processed; the source folder."""
    from fastapi.testclient import TestClient

    from ichd.service.app import create_app
    from ichd.service.runner import StudyService

    root = tmp_path_factory.mktemp("api")
    src = root / "ct"
    write_series(src, make_ct_series(N_SLICES, rows=SIZE, columns=SIZE))
    service = StudyService(h.make_config(root / "data", service_bundle))
    with TestClient(create_app(service)) as client:
        r = client.post("/v1/studies", content=h.zip_folder(src), headers={**h.AUTH, "Content-Type": "application/zip"})
        assert r.status_code == 202, r.text
        body = r.json()
        job = h.wait_job(client, body["job_id"])
        assert job["status"] == "done", job
        yield {"client": client, "service": service, "src": src, "study_id": body["study_id"], "job": job,
               "data": root / "data", "root": root}


@pytest.fixture(scope="module")
def cli_result(env: dict[str, Any], service_bundle: Path) -> dict[str, Any]:
    """What `ichd predict` writes for the same files with the same model."""
    from ichd.inference.predictor import Predictor
    from ichd.inference.run import PredictOptions, run_predict

    out = env["root"] / "cli-out"
    run_predict(env["src"], PredictOptions(out=out, formats=("json", "html", "dicom")),
                predictor=Predictor.load(service_bundle, device="cpu"))
    return json.loads((out / "prediction.json").read_text())


def _probabilities(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    scan = np.array([result["scan"][lab] for lab in LABELS])
    slices = np.array([[s["probabilities"][lab] for lab in LABELS] for s in result["slices"]])
    return scan, slices


def _same_prediction(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in ("schema_version", "model", "study_instance_uid", "series_instance_uid", "n_slices", "labels",
                "scan_positive", "thresholds", "input_kind"):
        assert got[key] == want[key], key
    assert [s["source_file"] for s in got["slices"]] == [s["source_file"] for s in want["slices"]]
    assert [s["sop_instance_uid"] for s in got["slices"]] == [s["sop_instance_uid"] for s in want["slices"]]
    for a, b in zip(_probabilities(got), _probabilities(want)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_zip_upload_gives_the_result_of_ichd_predict(env, cli_result, h):
    client = env["client"]
    job = env["job"]
    assert job["study_id"] == env["study_id"] and job["attempts"] == 1 and job["error"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    r = client.get(f"/v1/studies/{env['study_id']}/result", headers=h.AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"
    result = r.json()
    _same_prediction(result, cli_result)
    # the file served is the one run_predict wrote, byte for byte
    path = env["data"] / "studies" / env["study_id"] / "result" / "prediction.json"
    assert r.content == path.read_bytes()


def test_multipart_upload_gives_the_same_result(env, cli_result, h):
    client = env["client"]
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(env["src"].iterdir())]
    r = client.post("/v1/studies", files=files, headers=h.AUTH)
    assert r.status_code == 202, r.text
    assert h.wait_job(client, r.json()["job_id"])["status"] == "done"
    result = client.get(f"/v1/studies/{r.json()['study_id']}/result", headers=h.AUTH).json()
    _same_prediction(result, cli_result)


def test_a_zip_sent_as_one_multipart_file_is_unpacked(env, cli_result, h):
    client = env["client"]
    r = client.post("/v1/studies", files={"study": ("study.zip", h.zip_folder(env["src"]), "application/zip")},
                    headers=h.AUTH)
    assert r.status_code == 202, r.text
    assert h.wait_job(client, r.json()["job_id"])["status"] == "done"
    _same_prediction(client.get(f"/v1/studies/{r.json()['study_id']}/result", headers=h.AUTH).json(), cli_result)


def test_report_and_sr_are_served(env, h):
    import pydicom

    client, sid = env["client"], env["study_id"]
    r = client.get(f"/v1/studies/{sid}/report", headers=h.AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower() and "default-src 'none'" in r.headers["content-security-policy"]
    r = client.get(f"/v1/studies/{sid}/dicom/sr", headers=h.AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    sr = pydicom.dcmread(io.BytesIO(r.content))
    source = pydicom.dcmread(next(env["src"].glob("*.dcm")), stop_before_pixels=True)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID
    r = client.get(f"/v1/studies/{sid}/report?series=1", headers=h.AUTH)
    assert r.status_code == 404 and "out of range" in r.json()["error"]


def test_slice_pngs_with_and_without_overlay(env, h):
    from PIL import Image

    client, sid = env["client"], env["study_id"]
    base = f"/v1/studies/{sid}/slices"
    r = client.get(f"{base}/2.png", headers=h.AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    plain = Image.open(io.BytesIO(r.content))
    assert plain.size == (SIZE, SIZE) and plain.mode == "L"
    bone = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/2.png?window=bone", headers=h.AUTH).content)))
    assert not np.array_equal(np.asarray(plain), bone)  # another window, another picture
    r = client.get(f"{base}/2.png?window=subdural&overlay=subdural", headers=h.AUTH)
    assert r.status_code == 200
    over = Image.open(io.BytesIO(r.content))
    assert over.size == (SIZE, SIZE) and over.mode == "RGB"
    assert client.get(f"{base}/0.png?overlay=SDH", headers=h.AUTH).status_code == 200  # abbreviations work
    for query, words in (("window=lung", "unknown window"), ("overlay=blood", "unknown overlay class"),
                         ("series=x", "invalid request")):
        r = client.get(f"{base}/1.png?{query}", headers=h.AUTH)
        assert r.status_code == 400 and words in r.json()["error"] and r.json()["hint"], query
    r = client.get(f"{base}/{N_SLICES}.png", headers=h.AUTH)
    assert r.status_code == 400 and "out of range" in r.json()["error"]
    r = client.get(f"{base}/-1.png", headers=h.AUTH)
    assert r.status_code == 400 and "invalid slice index" in r.json()["error"]


def test_list_and_get_study(env, h):
    client, sid = env["client"], env["study_id"]
    studies = client.get("/v1/studies", headers=h.AUTH).json()["studies"]
    mine = next(s for s in studies if s["study_id"] == sid)
    assert mine["status"] == "done" and mine["job_id"] == env["job"]["job_id"] and mine["n_files"] == N_SLICES
    (series,) = mine["series"]
    assert series["n_slices"] == N_SLICES and set(series["scan"]) == set(LABELS)
    assert series["findings"] == [lab for lab in LABELS if series["scan_positive"][lab]]
    assert mine["links"]["result"] == f"/v1/studies/{sid}/result"
    assert client.get(f"/v1/studies/{sid}", headers=h.AUTH).json() == mine
    assert len(client.get("/v1/studies?limit=1", headers=h.AUTH).json()["studies"]) == 1


def test_errors_are_json_with_a_hint(env, h):
    client = env["client"]
    unknown = "0" * 32
    cases = [
        ("get", f"/v1/studies/{unknown}", 404, "no study"),
        ("get", f"/v1/jobs/{unknown}", 404, "no job"),
        ("get", "/v1/studies/not-an-id/result", 400, "invalid study id"),
        ("get", f"/v1/studies/{'A' * 32}/report", 400, "invalid study id"),  # uppercase is not an id
        ("get", "/v1/jobs/...", 400, "invalid job id"),
        ("delete", f"/v1/studies/{unknown[:-1]}", 400, "invalid study id"),
        ("get", "/v1/nothing", 404, "no such endpoint"),
        ("put", "/v1/studies", 405, "Method Not Allowed"),
        ("get", "/v1/studies?limit=0", 400, "invalid request"),
    ]
    for method, url, status, words in cases:
        r = client.request(method, url, headers=h.AUTH)
        assert r.status_code == status, (url, r.text)
        body = r.json()
        assert set(body) == {"error", "hint"} and words in body["error"], (url, body)
        assert "Traceback" not in r.text
    for url in ("/v1/studies/..%2F..%2Fetc%2Fpasswd/result", "/v1/studies/%2E%2E/report",
                "/v1/studies/%00/dicom/sr", "/v1/jobs/..%5C..%5Cx"):  # traversal never reaches a file
        r = client.get(url, headers=h.AUTH)
        assert r.status_code in (400, 404) and set(r.json()) == {"error", "hint"}, (url, r.text)


def test_delete_removes_every_file(env, h):
    client, data = env["client"], env["data"]
    before = {p for p in h.files_under(data) if not p.startswith(("logs", "ichd.sqlite"))}
    r = client.post("/v1/studies", content=h.zip_folder(env["src"]), headers={**h.AUTH, "Content-Type": "application/zip"})
    sid, job_id = r.json()["study_id"], r.json()["job_id"]
    assert h.wait_job(client, job_id)["status"] == "done"
    assert client.get(f"/v1/studies/{sid}/slices/0.png", headers=h.AUTH).status_code == 200
    study_files = {p for p in h.files_under(data) if sid in p}
    assert {f"studies/{sid}/result/prediction.json", f"studies/{sid}/result/dicom/sr.dcm",
            f"studies/{sid}/volumes/series-000.npy"} <= study_files
    r = client.delete(f"/v1/studies/{sid}", headers=h.AUTH)
    assert r.status_code == 200 and r.json() == {"deleted": sid}
    after = {p for p in h.files_under(data) if not p.startswith(("logs", "ichd.sqlite"))}
    assert after == before and not any(sid in p for p in h.files_under(data))
    for url in (f"/v1/studies/{sid}", f"/v1/studies/{sid}/result", f"/v1/jobs/{job_id}"):
        assert client.get(url, headers=h.AUTH).status_code == 404
    assert client.delete(f"/v1/studies/{sid}", headers=h.AUTH).status_code == 404
    assert sid not in {s["study_id"] for s in client.get("/v1/studies", headers=h.AUTH).json()["studies"]}


def test_health_and_docs(env, h):
    client = env["client"]
    assert client.get("/health").json()["status"] == "ok"
    spec = client.get("/openapi.json", headers=h.AUTH).json()
    assert "/v1/studies" in spec["paths"] and "multipart/form-data" in json.dumps(spec["paths"]["/v1/studies"])
    assert client.get("/docs", headers=h.AUTH).status_code == 200


def test_a_study_that_cannot_be_read_fails_with_the_cli_line(env, h, tmp_path):
    client = env["client"]
    (tmp_path / "notes.txt").write_text("not a CT")
    r = client.post("/v1/studies", files=[("files", ("notes.txt", b"not a CT", "text/plain"))], headers=h.AUTH)
    job = h.wait_job(client, r.json()["job_id"])
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "holds no DICOM, NIfTI or image files" in job["error"] and str(env["data"]) not in job["error"]
    r = client.get(f"/v1/studies/{job['study_id']}/result", headers=h.AUTH)
    assert r.status_code == 409 and "failed" in r.json()["error"]
    assert not (env["data"] / "studies" / job["study_id"] / "result").exists()


def test_nifti_upload(env, h, tmp_path):
    import nibabel as nib

    vol = np.full((40, 40, 3), -1000, np.int16)  # x, y, z
    vol[6:34, 6:34, :] = 40
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.5, 0.5, 5.0, 1.0])), str(path))
    client = env["client"]
    r = client.post("/v1/studies", files=[("files", ("head.nii.gz", path.read_bytes()))], headers=h.AUTH)
    assert r.status_code == 202, r.text
    assert h.wait_job(client, r.json()["job_id"])["status"] == "done"
    sid = r.json()["study_id"]
    result = client.get(f"/v1/studies/{sid}/result", headers=h.AUTH).json()
    assert result["input_kind"] == "nifti" and result["n_slices"] == 3
    assert client.get(f"/v1/studies/{sid}/slices/2.png?window=subdural", headers=h.AUTH).status_code == 200
    assert client.get(f"/v1/studies/{sid}/dicom/sr", headers=h.AUTH).status_code == 200  # in a new study


def test_a_study_with_two_series(env, h, tmp_path):
    client = env["client"]
    folder = tmp_path / "two"
    write_series(folder / "a", make_ct_series(3, rows=32, columns=32, series_uid=uid("two", "a")))
    write_series(folder / "b", make_ct_series(2, rows=32, columns=32, series_uid=uid("two", "b")))
    r = client.post("/v1/studies", content=h.zip_folder(folder), headers={**h.AUTH, "Content-Type": "application/zip"})
    assert h.wait_job(client, r.json()["job_id"])["status"] == "done"
    sid = r.json()["study_id"]
    results = client.get(f"/v1/studies/{sid}/result", headers=h.AUTH).json()
    assert isinstance(results, list) and [x["n_slices"] for x in results] == [3, 2]
    series = client.get(f"/v1/studies/{sid}", headers=h.AUTH).json()["series"]
    assert [s["series_instance_uid"] for s in series] == [x["series_instance_uid"] for x in results]
    for k, n in ((0, 3), (1, 2)):
        assert client.get(f"/v1/studies/{sid}/report?series={k}", headers=h.AUTH).status_code == 200
        assert client.get(f"/v1/studies/{sid}/dicom/sr?series={k}", headers=h.AUTH).status_code == 200
        assert client.get(f"/v1/studies/{sid}/slices/{n - 1}.png?series={k}", headers=h.AUTH).status_code == 200
        assert client.get(f"/v1/studies/{sid}/slices/{n}.png?series={k}", headers=h.AUTH).status_code == 400
    assert client.get(f"/v1/studies/{sid}/slices/0.png?series=2", headers=h.AUTH).status_code == 404


def test_warnings_name_files_relative_to_the_upload(env, h, tmp_path):
    """The result, the report and so the viewer show the uploaded files' names, never the server's folders."""
    client = env["client"]
    datasets = make_ct_series(N_SLICES, rows=SIZE, columns=SIZE)
    src = tmp_path / "upload"
    write_series(src, datasets)
    write_series(src, datasets[:1], names=["again.dcm"])  # a duplicate instance: a warning naming a file
    (src / "broken.dcm").write_bytes((src / "IM0001.dcm").read_bytes()[:300])  # truncated: skipped, with a warning
    r = client.post("/v1/studies", content=h.zip_folder(src), headers={**h.AUTH, "Content-Type": "application/zip"})
    assert r.status_code == 202, r.text
    assert h.wait_job(client, r.json()["job_id"])["status"] == "done"
    sid = r.json()["study_id"]
    result = client.get(f"/v1/studies/{sid}/result", headers=h.AUTH).json()
    files = {f for w in result["warnings"] for f in w["files"]}
    assert {"broken.dcm"} <= files and files & {"again.dcm", "IM0000.dcm"}, result["warnings"]
    report = client.get(f"/v1/studies/{sid}/report", headers=h.AUTH).text
    for text in (json.dumps(result["warnings"]), report):
        assert str(env["data"]) not in text and "/input/" not in text


def test_overlays_of_a_thin_series_are_computed_on_its_slabs(client_for, tmp_path, h):
    """A 1.25 mm series is read as 5 mm slabs: the viewer's evidence map of a slice is that of its slab (the mean of
    the slab's slices, what the model saw), the slice image itself is the thin slice."""
    src = tmp_path / "thin"
    write_series(src, make_ct_series(8, spacing=1.25, rows=SIZE, columns=SIZE))
    client = client_for(tmp_path / "data")
    r = client.post("/v1/studies", content=h.zip_folder(src), headers={**h.AUTH, "Content-Type": "application/zip"})
    sid = r.json()["study_id"]
    assert h.wait_job(client, r.json()["job_id"])["status"] == "done"
    result = client.get(f"/v1/studies/{sid}/result", headers=h.AUTH).json()
    assert [sl["source_slices"] for sl in result["slabs"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    service = client.service
    result_json = service.paths(sid).result / "prediction.json"
    seen = service.model_slice(sid, 0, 5, result_json)
    np.testing.assert_allclose(seen, np.mean([service.load_slice(sid, 0, i) for i in range(4, 8)], axis=0),
                               atol=1e-4)
    assert not np.allclose(seen, service.load_slice(sid, 0, 5))  # the phantom's blob moves along z
    assert client.get(f"/v1/studies/{sid}/slices/5.png?overlay=any", headers=h.AUTH).status_code == 200


def test_study_list_has_the_worklist_fields(env, h, tmp_path):
    """Each listed series carries its description, call and not-assessable reason (the viewer's worklist)."""
    client = env["client"]
    datasets = make_ct_series(N_SLICES, rows=SIZE, columns=SIZE)
    for ds in datasets:
        ds.SeriesDescription = "Head  5mm   axial"
    src = tmp_path / "described"
    write_series(src, datasets)
    r = client.post("/v1/studies", content=h.zip_folder(src), headers={**h.AUTH, "Content-Type": "application/zip"})
    assert h.wait_job(client, r.json()["job_id"])["status"] == "done"
    listed = {s["study_id"]: s for s in client.get("/v1/studies", headers=h.AUTH).json()["studies"]}
    (series,) = listed[r.json()["study_id"]]["series"]
    assert series["series_description"] == "Head 5mm axial" and series["n_slices"] == N_SLICES
    assert series["scan_call"] in ("positive", "negative", "not_assessable")
    assert "not_assessable_reason" in series and series["in_training_data"] in (True, False, None)
    assert listed[env["study_id"]]["series"][0]["series_description"] == ""  # the factory sets none
    assert listed[r.json()["study_id"]]["source"] == "upload"
