"""A real Orthanc PACS for tests and benchmarks (Debian package ``orthanc``): its generated configuration, its
REST API, and series made ready to store the way a PACS holds them.

Used by ``tests/integration/test_orthanc_roundtrip.py``, ``tests/integration/test_orthanc_dicomweb.py`` and
``benchmarks/pacs_latency.py``; docs/pacs.md explains the same configuration for a real deployment. Standard library and pydicom only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ichd.testing.server import wait_until

#: Orthanc's auto-routing script shipped with ichd (docs/pacs.md).
AUTOROUTE_LUA = Path(__file__).resolve().parents[3] / "deploy" / "orthanc" / "ichd-autoroute.lua"
#: Orthanc: a series is stable after this many seconds without a new instance (the tests' setting).
STABLE_AGE_S = 2


def find_orthanc() -> str | None:
    """The Orthanc executable (``/usr/sbin`` is not on every user's PATH), or None."""
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                            if os.access(p, os.X_OK)), None)


#: Where the Debian package ``orthanc-dicomweb`` puts the DICOMweb plugin (``dpkg -L orthanc-dicomweb``), then
#: Orthanc's plugin folder.
DICOMWEB_PLUGIN_PATHS = ("/usr/lib/orthanc/libOrthancDicomWeb.so.1.7", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def find_dicomweb_plugin() -> str | None:
    """Orthanc's DICOMweb plugin (a shared library, for the ``"Plugins"`` key), or None."""
    listed: list[str] = []
    if shutil.which("dpkg-query"):
        got = subprocess.run(["dpkg-query", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False)
        if got.returncode == 0:
            listed = [line for line in got.stdout.splitlines() if "libOrthancDicomWeb.so" in line]
    return next((p for p in (*listed, *DICOMWEB_PLUGIN_PATHS) if os.path.isfile(p)), None)


class OrthancApi:
    """Orthanc's REST API on ``http://127.0.0.1:port``."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | None = None, *,
                timeout: float = 600) -> Any:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.base + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return json.loads(raw) if r.headers.get_content_type() == "application/json" else raw

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def instance_files(self, series: list[dict[str, Any]], *, skip_modality: str = "CT") -> list[bytes]:
        """The stored DICOM files of every instance of ``series`` (``/studies/ID/series?expand`` entries) whose
        Modality is not ``skip_modality`` (by default: ichd's results, not the CT that was sent)."""
        return [self.request("GET", f"/instances/{instance}/file") for s in series
                if s["MainDicomTags"].get("Modality") != skip_modality for instance in s["Instances"]]

    def alive(self) -> bool:
        try:
            return self.get("/system")["Version"] is not None
        except (urllib.error.URLError, OSError):
            return False

    def echo(self, modality: str) -> bool:
        """Orthanc's C-ECHO to ``modality``: True when it answered."""
        try:
            self.post(f"/modalities/{modality}/echo", b"{}")
            return True
        except urllib.error.HTTPError:
            return False


def orthanc_config(root: Path, *, http_port: int, dicom_port: int, ichd_port: int, lua: bool = False,
                   stable_age_s: int = STABLE_AGE_S, dicomweb_plugin: str | None = None,
                   dicomweb_servers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Orthanc's configuration on loopback: storage under ``root``, a modality ``ichd`` (AE ICHD on
    ``ichd_port``), and with ``lua`` the auto-routing script. With ``dicomweb_plugin`` (:func:`find_dicomweb_plugin`)
    Orthanc loads the DICOMweb plugin, whose client talks to ``dicomweb_servers`` (the ``DicomWeb.Servers``
    entries, e.g. ``{"ichd": {"Url": ..., "HttpHeaders": {"Authorization": "Bearer ..."}}}``)."""
    config = {
        "Name": "ichd-test", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC", "DicomPort": dicom_port, "DicomAlwaysAllowStore": True, "Plugins": [],
        "DicomModalities": {"ichd": ["ICHD", "127.0.0.1", ichd_port]}, "StableAge": stable_age_s,
        "LuaScripts": [str(AUTOROUTE_LUA)] if lua else [],
    }
    if dicomweb_plugin is not None:
        config["Plugins"] = [dicomweb_plugin]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                              "Servers": dicomweb_servers or {}}
    return config


@contextmanager
def running_orthanc(executable: str, config: dict[str, Any], root: Path) -> Iterator[OrthancApi]:
    """Start Orthanc with ``config`` (written to ``root/orthanc.json``, log in ``root/orthanc.log``), wait for its
    REST API, and stop it at the end."""
    path = root / "orthanc.json"
    path.write_text(json.dumps(config, indent=1))
    with open(root / "orthanc.log", "w") as log:
        proc = subprocess.Popen([executable, str(path)], stdout=log, stderr=subprocess.STDOUT)
        try:
            api = OrthancApi(int(config["HttpPort"]))

            def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError((root / "orthanc.log").read_text())
                return api.alive()

            wait_until("Orthanc's REST API", up, timeout=30)
            yield api
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


def read_quietly(path: Path) -> Any:
    """``pydicom.dcmread``, checking that its only warnings are the RSNA pseudo-UIDs' known one."""
    import pydicom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(path)
        _ = (ds.get("SOPInstanceUID"), ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"))
    unexpected = [str(w.message) for w in caught if "Invalid value for VR UI: 'ID_" not in str(w.message)]
    if unexpected:
        raise AssertionError(unexpected)
    return ds


def pacs_ready_copy(src: Path, dest: Path) -> list[Path]:
    """The series of ``src`` as a PACS holds CT: SOP Class UID in the data set (research exports such as the RSNA
    files carry it only in the file meta, which Orthanc stores but cannot send on), valid UIDs (each ``ID_...``
    pseudonym mapped to a UID derived from it); the pixel data as stored."""
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True)
    out = []
    for p in sorted(src.glob("*.dcm")):
        ds = read_quietly(p)
        if "SOPClassUID" not in ds:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        for elem in ds.iterall():
            if elem.VR == "UI" and isinstance(elem.value, str) and elem.value.startswith("ID_"):
                elem.value = generate_uid(entropy_srcs=[elem.value])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dest / p.name, enforce_file_format=True)
        out.append(dest / p.name)
    return out
