"""No patient names or IDs in the service log: a synthetic study with a known PatientName/PatientID goes through
upload, prediction (done and failed), every result endpoint and deletion; the log file and every log record of
the process are then searched for them."""

from __future__ import annotations

import logging
from pathlib import Path

from ichd.testing.factories import make_ct_series, make_ct_slice, write_series

PATIENT_NAME = "Zqxname^Wvsecret"
PATIENT_ID = "PID-7391-QZX"
BIRTH_DATE = "19230417"
SECRETS = ("Zqxname", "Wvsecret", PATIENT_ID, BIRTH_DATE)


def test_patient_identifiers_never_reach_the_log(tmp_path: Path, client_for, h, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    extra = {"PatientName": PATIENT_NAME, "PatientBirthDate": BIRTH_DATE}
    good = tmp_path / "good"
    write_series(good, make_ct_series(3, rows=32, columns=32, patient_id=PATIENT_ID, extra=extra))
    # a study that fails: one CT file without pixel data (read leniently: skipped, then nothing is left)
    bad = tmp_path / "bad"
    write_series(bad, [make_ct_slice(patient_id=PATIENT_ID, extra=extra, drop_tags=["PixelData"])])
    data = tmp_path / "data"
    client = client_for(data)

    r = client.post("/v1/studies", content=h.zip_folder(good), headers={**h.AUTH, "Content-Type": "application/zip"})
    sid, job_id = r.json()["study_id"], r.json()["job_id"]
    assert h.wait_job(client, job_id)["status"] == "done"
    files = [("files", (p.name, p.read_bytes())) for p in bad.iterdir()]
    failed = h.wait_job(client, client.post("/v1/studies", files=files, headers=h.AUTH).json()["job_id"])
    assert failed["status"] == "failed"
    assert not any(s in failed["error"] for s in SECRETS)
    for url in ("/result", "/report", "/dicom/sr", "/slices/1.png?overlay=any", ""):
        assert client.get(f"/v1/studies/{sid}{url}", headers=h.AUTH).status_code == 200, url
    # the identifiers really flowed through the service: the SR is filed under the patient
    import io

    import pydicom

    sr = pydicom.dcmread(io.BytesIO(client.get(f"/v1/studies/{sid}/dicom/sr", headers=h.AUTH).content))
    assert str(sr.PatientName) == PATIENT_NAME and sr.PatientID == PATIENT_ID
    assert client.delete(f"/v1/studies/{sid}", headers=h.AUTH).status_code == 200
    client.service.close()  # stop the workers and flush the log (the fixture closes the app later)

    log_text = (data / "logs" / "service.log").read_text()
    assert sid in log_text and job_id in log_text and "failed" in log_text  # the log is not trivially empty
    records = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for secret in SECRETS:
        assert secret not in log_text, secret
        assert secret not in records, secret
