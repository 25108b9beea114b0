"""No patient identifier from real DICOM headers reaches a log line, stderr, an error message or an HTTP error body.

The synthetic counterpart is tests/unit/service/test_phi_logs.py; this one uses the real files of ../shared/data and
every way out of the program a value could take:

* the header values as found: rsna-series (PatientID), cq500 (PatientName and PatientID ``CQ500-CT-1``; their
  birth date, study date and accession number are empty);
* copies of a real rsna-series series with known values written into PatientName, PatientID, PatientBirthDate,
  StudyDate, AccessionNumber, OtherPatientIDs, some of them invalid for their VR (pydicom then warns, and its
  warnings are logged at debug level);
* error paths: a copy cut in the middle of the PatientName value, a copy whose pixel data is cut, a study of only
  broken files;
* ``ichd -vv ingest``, ``ichd -vv predict`` (debug logging to a file) and a real ``ichd -vv serve`` process: upload,
  job, result/report/SR/slice endpoints, failed job, error bodies, service.log.

Files are copied under neutral names first: a folder the user named after a patient is the user's choice, not a
header value.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

RSNA_SERIES = "ID_9d97cf289b"
INJECTED = {
    "PatientName": "Qzvoriginal^Wxpatientname",
    "PatientID": "MRN-58213-QZX",
    "PatientBirthDate": "1937-05-19",  # not DICOM DA (YYYYMMDD): pydicom warns with the value
    "StudyDate": "20170823",
    "AccessionNumber": "ACCQ7720458113",
    "OtherPatientIDs": "ALTQ99172",
}
#: The parts of the injected values that must never appear (a name's components, the date also as DICOM would
#: write it).
INJECTED_SECRETS = ("Qzvoriginal", "Wxpatientname", "MRN-58213-QZX", "1937-05-19", "19370519", "20170823",
                    "ACCQ7720458113", "ALTQ99172")
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "AccessionNumber", "OtherPatientIDs")
TOKEN = "phi-real-token-0123456789abcdef"


def header_values(path: Path) -> set[str]:
    """The non-empty PHI values of a real file's header (name components separately)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    values: set[str] = set()
    for kw in PHI_KEYWORDS:
        value = ds.get(kw)
        if value is None or str(value).strip() == "":
            continue
        values.add(str(value))
        if kw == "PatientName":
            values.update(p for p in str(value).split("^") if len(p) >= 4)
    return values


def inject(src: Path, dest: Path) -> None:
    """Copy the DICOM file ``src`` to ``dest`` with the :data:`INJECTED` values in its header.

    Setting and writing make pydicom validate the values: it warns about the RSNA pseudo-UIDs (``ID_...``,
    documented in rsna-series/README.md) and the deliberately invalid birth date; those warnings are expected
    here, anything else fails the test."""
    import warnings

    import pydicom

    ds = pydicom.dcmread(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kw, value in INJECTED.items():
            setattr(ds, kw, value)
        ds.save_as(dest, enforce_file_format=True)
    unexpected = [str(w.message) for w in caught
                  if not str(w.message).startswith(("Invalid value for VR UI: 'ID_", "Invalid value for VR DA"))]
    assert not unexpected, unexpected


def cut_in_patient_name(src: Path, dest: Path) -> None:
    """A copy of ``src`` that ends in the middle of its PatientName value."""
    data = src.read_bytes()
    at = data.index(INJECTED["PatientName"].encode())
    dest.write_bytes(data[: at + 8])


def cut_pixels(src: Path, dest: Path) -> None:
    """A copy of ``src`` with the last 40 % of the file (its pixel data) cut off."""
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * 0.6)])


def ichd(*args: str, log: Path) -> subprocess.CompletedProcess[str]:
    """``python -m ichd -vv ARGS``; stderr (the debug log) is also appended to ``log``."""
    from ichd.testing.server import child_env

    done = subprocess.run([sys.executable, "-m", "ichd", "-vv", *args], check=False, capture_output=True, text=True,
                          env=child_env(), timeout=180)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ ichd -vv {' '.join(args)}\n{done.stderr}\n")
    return done


@pytest.fixture(scope="module")
def inputs(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Neutrally named copies: real series, real single slice, injected series, broken files."""
    base = tmp_path_factory.mktemp("phi")
    rsna_files = sorted((data_root / "rsna-series" / "dicom" / RSNA_SERIES).glob("*.dcm"))
    cq = next((data_root / "cq500" / "CQ500-CT-1").rglob("*.dcm"))
    paths = {"rsna": base / "study-a", "cq500": base / "study-b", "injected": base / "study-c",
             "broken": base / "study-d"}
    paths["rsna"].mkdir()
    for k, f in enumerate(rsna_files):
        shutil.copy(f, paths["rsna"] / f"IM{k:04d}.dcm")
    paths["cq500"].mkdir()
    shutil.copy(cq, paths["cq500"] / "IM0001.dcm")
    for k, f in enumerate(rsna_files):
        inject(f, paths["injected"] / f"IM{k:04d}.dcm")
    paths["broken"].mkdir()
    cut_in_patient_name(paths["injected"] / "IM0000.dcm", paths["broken"] / "IM0001.dcm")
    cut_pixels(paths["injected"] / "IM0001.dcm", paths["broken"] / "IM0002.dcm")
    (paths["broken"] / "IM0003.dcm").write_bytes(b"not dicom at all " + INJECTED["PatientID"].encode())
    # and the broken files beside good ones: they are skipped with a warning, which names files, not patients
    for name in ("IM0001.dcm", "IM0002.dcm"):
        shutil.copy(paths["broken"] / name, paths["injected"] / f"X{name}")
    return paths


def secrets_of(data_root: Path) -> set[str]:
    rsna = next((data_root / "rsna-series" / "dicom" / RSNA_SERIES).glob("*.dcm"))
    cq = next((data_root / "cq500" / "CQ500-CT-1").rglob("*.dcm"))
    found = header_values(rsna) | header_values(cq)
    assert found >= {"CQ500-CT-1"} and any(v.startswith("ID_") for v in found), found  # what the files hold
    return found | set(INJECTED_SECRETS)


def assert_clean(where: str, text: str, secrets: set[str]) -> None:
    leaked = sorted(s for s in secrets if s in text)
    assert not leaked, f"{where} holds {leaked}"


def test_cli_ingest_and_predict_logs_hold_no_patient_identifiers(inputs: dict[str, Path], data_root: Path,
                                                                 test_bundle: Path, tmp_path: Path) -> None:
    secrets = secrets_of(data_root)
    log = tmp_path / "debug.log"
    outcomes = []
    for name in ("rsna", "cq500", "injected", "broken"):
        outcomes.append((f"ingest {name}", ichd("ingest", "--json", "--workers", "1", str(inputs[name]), log=log)))
    for name in ("injected", "broken"):
        outcomes.append((f"predict {name}", ichd("predict", str(inputs[name]), "--model", str(test_bundle), "--out",
                                                 str(tmp_path / f"out-{name}"), "--device", "cpu", "--workers", "1",
                                                 log=log)))
    codes = {what: done.returncode for what, done in outcomes}
    assert codes == {"ingest rsna": 0, "ingest cq500": 0, "ingest injected": 0, "ingest broken": 2,
                     "predict injected": 0, "predict broken": 2}, codes
    text = log.read_text()
    assert "DEBUG" in text and "ichd: error:" in text and "skipped" in text  # debug lines and errors were logged
    assert_clean("the debug log (stderr)", text, secrets)
    for what, done in outcomes:  # ingest --json and the predict summary (patient ids are pseudonymised)
        assert_clean(f"stdout of {what}", done.stdout, secrets)


def wait_done(client: object, job_id: str, timeout: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(f"/v1/jobs/{job_id}").json()  # type: ignore[attr-defined]
        if state["status"] in ("done", "failed"):
            return state
        assert time.monotonic() < deadline, f"job {job_id} still {state['status']}"
        time.sleep(0.25)


def test_service_logs_errors_and_http_bodies_hold_no_patient_identifiers(inputs: dict[str, Path], data_root: Path,
                                                                         test_bundle: Path, tmp_path: Path) -> None:
    import httpx2

    from ichd.testing.server import ServeProcess

    secrets = secrets_of(data_root)
    data = tmp_path / "data"
    server = ServeProcess(data, model=str(test_bundle), token=TOKEN, verbosity=2, log_path=tmp_path / "serve.log")
    responses: list[tuple[int, str]] = []  # every error response, and the study list
    job_errors: list[str] = []
    try:
        server.start()
        with server.client() as c:
            jobs = {}
            for name in ("rsna", "cq500", "injected", "broken"):
                files = [("files", (p.name, p.read_bytes(), "application/dicom"))
                         for p in sorted(inputs[name].iterdir())]
                r = c.post("/v1/studies", files=files)
                assert r.status_code == 202, r.text
                jobs[name] = r.json()
            for name, job in jobs.items():
                state = wait_done(c, job["job_id"])
                assert state["status"] == ("failed" if name == "broken" else "done"), (name, state)
                if state["error"]:
                    job_errors.append(str(state["error"]))
                for url in ("", "/result", "/report", "/dicom/sr", "/slices/0.png?overlay=any", "/slices/9999.png",
                            "/report?series=7"):
                    r = c.get(f"/v1/studies/{job['study_id']}{url}")
                    if r.status_code >= 400:
                        responses.append((r.status_code, r.text))
            list_all = c.get("/v1/studies")
            responses.append((list_all.status_code, list_all.text))  # summaries are shown to every user
            # an upload refused outright (a DICOM file sent as a zip body)
            bad = c.post("/v1/studies", content=(inputs["broken"] / "IM0001.dcm").read_bytes(),
                         headers={"Content-Type": "application/zip"})
            responses.append((bad.status_code, bad.text))
        no_token = httpx2.get(server.url + "/v1/studies", timeout=10)
        responses.append((no_token.status_code, no_token.text))
    finally:
        server.close()
    assert {409, 404, 400, 401} <= {code for code, _ in responses}, sorted({code for code, _ in responses})
    assert len(job_errors) == 1  # the study of broken files
    process_log = server.log_path.read_text(encoding="utf-8", errors="replace")  # type: ignore[union-attr]
    service_log = (data / "logs" / "service.log").read_text()
    assert "DEBUG" in process_log and "failed" in service_log  # the logs are not trivially empty
    assert_clean("the serve process output (-vv)", process_log, secrets)
    assert_clean("service.log", service_log, secrets)
    for e in job_errors:
        assert_clean("a failed job's error", e, secrets)
    for code, body in responses:
        assert_clean(f"an HTTP {code} body", body, secrets)
