"""A round trip with a real Orthanc PACS (Debian package ``orthanc``), as docs/pacs.md sets it up.

Orthanc runs on loopback with a generated configuration (temporary storage, free ports, a modality entry ``ichd``
for ichd's DICOM node). A real rsna-series series is stored into Orthanc with its REST API (``POST /instances``);
Orthanc sends it to ``ichd listen``, which analyses it after the idle timeout and forwards (``--forward``) the SR
and the Secondary Captures back to Orthanc. The test reads them from Orthanc's REST API and checks that they sit in
the source study and reference its instances. Two ways to have Orthanc send the series, one scenario each:
``rest`` (the test calls ``POST /modalities/ichd/store``) and ``lua`` (docs/pacs.md's auto-routing script,
``deploy/orthanc/ichd-autoroute.lua``, sends each stable CT series and not ichd's results).

The RSNA files are what a PACS would never hold, in two ways, both fixed on a copy before Orthanc sees them (the
pixel data, JPEG-LS, stays as stored): their SOP Class UID is only in the file meta (Orthanc stores such files but
cannot send them: "Unable to determine the SOP class/instance for C-STORE"), and their UIDs are pseudonyms
(``ID_...``), not valid UIDs, for which ichd's results start a new study. Each pseudonym is mapped to a valid UID
derived from it.

Without Orthanc the tests are skipped (``apt-get install orthanc``), except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

from ichd.testing import orthanc
from ichd.testing.orthanc import orthanc_config, pacs_ready_copy
from ichd.testing.server import free_port, stop_process, wait_until

RSNA_SERIES = "ID_3d2ee1643b"  # 36 slices, JPEG-LS lossless
IDLE_S = 2
STABLE_AGE_S = orthanc.STABLE_AGE_S
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def find_orthanc() -> str:
    path = orthanc.find_orthanc()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Orthanc is not installed; CI must install it (apt-get install orthanc)")
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    return path


def read(data: bytes | Path) -> pydicom.Dataset:
    """``pydicom.dcmread`` of a file or bytes, checking that its only warnings are the RSNA pseudo-UIDs' one."""
    if isinstance(data, Path):
        return orthanc.read_quietly(data)
    import io

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(io.BytesIO(data))
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]
    return ds


@dataclass
class Outcome:
    root: Path
    files: list[Path]
    data: Path
    series_id: str = ""  # Orthanc's id of the source series
    study_id: str = ""  # Orthanc's id of the source study
    store: dict[str, Any] = field(default_factory=dict)
    forward: dict[str, Any] = field(default_factory=dict)
    series: list[dict[str, Any]] = field(default_factory=list)  # the study's series in Orthanc, at the end
    objects: dict[str, bytes] = field(default_factory=dict)  # SOPInstanceUID -> file, ichd's objects from Orthanc
    seconds_to_sr: float = 0.0
    store_jobs: int = 0  # Orthanc's C-STORE jobs at the end (the REST call is synchronous: no job)
    listener_code: int | None = None
    listener_output: str = ""


@pytest.fixture(scope="module")
def calling_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny untrained test model with every threshold at 0: every label is called, so the SR holds a finding
    with its source slice (INFERRED FROM) for each label, which the reference checks need."""
    from model_factories import make_bundle, make_cnn_checkpoint

    root = tmp_path_factory.mktemp("calling-model")
    return make_bundle(root / "bundle", make_cnn_checkpoint(root / "cnn.pt"), threshold=0.0)


@pytest.fixture(scope="module", params=["rest", "lua"])
def scenario(request: pytest.FixtureRequest, data_root: Path, calling_bundle: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Any:
    orthanc_bin = find_orthanc()
    routing = request.param
    root = tmp_path_factory.mktemp(f"orthanc-{routing}")
    out = Outcome(root=root, files=pacs_ready_copy(data_root / "rsna-series" / "dicom" / RSNA_SERIES,
                                                   root / "series"), data=root / "ichd-data")
    http_port, dicom_port, ichd_port = free_port(), free_port(), free_port()
    config = root / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(root, http_port=http_port, dicom_port=dicom_port,
                                                 ichd_port=ichd_port, lua=routing == "lua"), indent=1))
    pacs = orthanc.OrthancApi(http_port)
    orthanc_log = open(root / "orthanc.log", "w")  # noqa: SIM115 - closed in the finally below
    server = subprocess.Popen([orthanc_bin, str(config)], stdout=orthanc_log, stderr=subprocess.STDOUT)
    listener_log = open(root / "listener.log", "w")  # noqa: SIM115
    listener = subprocess.Popen(
        [sys.executable, "-m", "ichd", "listen", "--aet", "ICHD", "--port", str(ichd_port), "--host", "127.0.0.1",
         "--data-dir", str(out.data), "--idle-timeout", str(IDLE_S), "--forward", f"ORTHANC@127.0.0.1:{dicom_port}",
         "--allow-aet", "ORTHANC",  # docs/pacs.md's setting: only Orthanc may send
         "--model", str(calling_bundle), "--device", "cpu", "--threads", "1"],
        stdout=listener_log, stderr=subprocess.STDOUT, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    try:
        def orthanc_up() -> bool:
            assert server.poll() is None, (root / "orthanc.log").read_text()
            return pacs.alive()

        wait_until("Orthanc's REST API", orthanc_up, timeout=30)

        def echo() -> bool:  # Orthanc's C-ECHO to the ichd node: both sides are up and configured
            assert listener.poll() is None, (root / "listener.log").read_text()
            try:
                pacs.post("/modalities/ichd/echo", b"{}")
                return True
            except urllib.error.HTTPError:
                return False

        wait_until("ichd's DICOM node to answer Orthanc's C-ECHO", echo, timeout=90, every=0.5)
        t0 = time.monotonic()
        for p in out.files:
            stored = pacs.post("/instances", p.read_bytes())
            assert stored["Status"] == "Success", stored
            out.series_id, out.study_id = stored["ParentSeries"], stored["ParentStudy"]
        if routing == "rest":
            out.store = pacs.post("/modalities/ichd/store", {"Resources": [out.series_id], "Synchronous": True})
        else:  # the Lua script submits the send as an Orthanc job once the series is stable
            def store_job() -> dict[str, Any] | None:
                jobs = [j for j in pacs.get("/jobs?expand") if j["Type"] == "DicomModalityStore"]
                return jobs[0] if jobs and jobs[0]["State"] in ("Success", "Failure") else None

            job = wait_until("the auto-routing job", store_job, timeout=60)
            assert job["State"] == "Success", job
            out.store = job["Content"]

        def sr_in_orthanc() -> list[dict[str, Any]] | None:
            series = pacs.get(f"/studies/{out.study_id}/series?expand")
            return series if any(s["MainDicomTags"].get("Modality") == "SR" for s in series) else None

        wait_until("the SR in Orthanc", sr_in_orthanc, timeout=60)
        out.seconds_to_sr = time.monotonic() - t0
        if routing == "lua":  # ichd's results made the study change: once they are stable too, nothing more is sent
            time.sleep(STABLE_AGE_S + 1.5)
        out.store_jobs = len([j for j in pacs.get("/jobs?expand") if j["Type"] == "DicomModalityStore"])
        records = wait_until("the forward record", lambda: list((out.data / "studies").glob("*/forward.json")),
                             timeout=30)
        assert len(records) == 1, records
        out.forward = json.loads(records[0].read_text())
        out.series = pacs.get(f"/studies/{out.study_id}/series?expand")
        for data in pacs.instance_files(out.series):
            out.objects[str(read(data).SOPInstanceUID)] = data
        listener.send_signal(signal.SIGTERM)
        out.listener_code = listener.wait(timeout=60)
    finally:
        for proc in (listener, server):
            stop_process(proc)
        listener_log.close()
        orthanc_log.close()
    out.listener_output = (root / "listener.log").read_text()
    return out


def _source(out: Outcome) -> tuple[str, str, set[str]]:
    """The source series' study UID, patient ID and SOP instance UIDs."""
    headers = [read(p) for p in out.files]
    return str(headers[0].StudyInstanceUID), str(headers[0].PatientID), {str(h.SOPInstanceUID) for h in headers}


def _referenced(ds: pydicom.Dataset) -> set[str]:
    return {str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}


def test_orthanc_sends_the_series_to_ichd(scenario: Outcome) -> None:
    assert scenario.store["InstancesCount"] == len(scenario.files) and scenario.store["FailedInstancesCount"] == 0
    assert scenario.store["RemoteAet"] == "ICHD"
    assert f"{len(scenario.files)} instance(s) stored, 0 refused" in scenario.listener_output
    stores = re.findall(r"released: ([1-9][0-9]*) instance\(s\) stored", scenario.listener_output)
    assert stores == [str(len(scenario.files))]  # one association stored: the results were never sent back
    if "lua" in scenario.root.name:
        assert scenario.store_jobs == 1  # the auto-routing sent the CT series once, not ichd's SR or SCs


def test_ichd_forwards_the_sr_and_secondary_captures_into_the_source_study(scenario: Outcome) -> None:
    record = scenario.forward
    assert record["status"] == "sent" and record["n_failed"] == 0, record
    forwarded = {f["sop_instance_uid"] for f in record["files"]}
    assert set(scenario.objects) == forwarded  # Orthanc holds exactly what ichd sent, in the source study
    modalities = sorted(s["MainDicomTags"]["Modality"] for s in scenario.series)
    assert modalities == ["CT", "OT", "SR"], modalities
    classes = [str(read(d).SOPClassUID) for d in scenario.objects.values()]
    assert classes.count(COMPREHENSIVE_SR) == 1 and classes.count(SECONDARY_CAPTURE) == len(classes) - 1 >= 1
    study_uid, patient_id, _ = _source(scenario)
    for data in scenario.objects.values():
        ds = read(data)
        assert str(ds.StudyInstanceUID) == study_uid and str(ds.PatientID) == patient_id


def test_the_results_reference_the_source_instances(scenario: Outcome) -> None:
    from ichd.constants import LABELS

    _, _, sops = _source(scenario)
    objects = [read(d) for d in scenario.objects.values()]
    (sr,) = [ds for ds in objects if ds.Modality == "SR"]
    scs = [ds for ds in objects if ds.Modality != "SR"]
    sc_uids = {str(ds.SOPInstanceUID) for ds in scs}
    refs = _referenced(sr)
    assert refs <= sops | sc_uids, refs - sops - sc_uids  # source slices and ichd's own images, all in Orthanc
    # every label is called (thresholds 0): one source slice per finding, INFERRED FROM
    cited = [item for e in sr.iterall() if e.keyword == "ContentSequence" for item in e.value
             if item.get("RelationshipType") == "INFERRED FROM"]
    assert len(cited) == len(LABELS)
    inferred = {str(ref.ReferencedSOPInstanceUID) for item in cited for ref in item.ReferencedSOPSequence}
    assert inferred and inferred <= sops
    evidence = {str(r.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert inferred <= evidence  # the evidence list names the source slices the SR cites
    for ds in scs:
        (source,) = ds.SourceImageSequence
        assert str(source.ReferencedSOPInstanceUID) in sops and source.ReferencedSOPClassUID == CT_IMAGE_STORAGE


def test_round_trip_time_and_a_clean_stop(scenario: Outcome) -> None:
    # from the store into Orthanc to the SR in Orthanc, the idle timeout (IDLE_S) included; the tiny test model
    assert IDLE_S < scenario.seconds_to_sr < 60
    assert scenario.listener_code == 0 and "Traceback" not in scenario.listener_output, scenario.listener_output
