"""The web viewer in a real headless browser: a real ``ichd serve`` (subprocess, default model, a token, a free
loopback port) and Debian's chromium driven by Playwright. The page asks for the token, uploads a real RSNA series
through its form, waits for the job, opens the study, scrolls (wheel and arrow keys), switches the window and the
Grad-CAM overlay, jumps through the probability curve, and every request it makes carries the token and stays on
the service; a screenshot is saved.

Needs ../shared/data (``ICHD_DATA``), ``playwright`` (pip; no ``playwright install``: the system chromium is used)
and ``/usr/bin/chromium`` (or ``ICHD_CHROMIUM``). Skipped when the browser or Playwright is missing, except in CI
(``CI=true``), where that fails. ``ICHD_E2E_ARTIFACTS=DIR`` keeps the screenshot and the server log in DIR.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ichd.testing.server import free_port, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOKEN = "e2e-viewer-token-0123456789abcdef"
#: A series with hemorrhage (IPH, IVH, SAH; 34 slices, 24 degree gantry tilt) from rsna-series/README.md.
SERIES = "ID_7518324893"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 120.0
DICOM_IDLE_S = 600  # longer than the module runs: a series sent over DICOM stays in the "receiving" state
JOB_TIMEOUT_MS = 150_000
#: The probability curve's SVG geometry (viewer.js: CURVE): width, left and right margins.
CURVE_W, CURVE_L, CURVE_R = 640, 36, 10


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must install it: see tests/e2e/test_viewer_browser.py)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium executable; skip (fail in CI) when it or Playwright is missing."""
    path = os.environ.get("ICHD_CHROMIUM", "/usr/bin/chromium")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        _missing(f"no chromium at {path} (apt-get install chromium, or set ICHD_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed (pip install playwright; `playwright install` is not needed)")
    return path


def _get_json(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@dataclass
class Server:
    url: str
    log: Path
    dicom_port: int = 0

    def api(self, path: str) -> Any:
        return _get_json(self.url + path, TOKEN)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``ichd serve`` with the default model, a token and a fresh data folder, on a free loopback port."""
    root = tmp_path_factory.mktemp("viewer-e2e")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    port, dicom_port = free_port(), free_port()
    log = root / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "ICHD_TOKEN"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    cmd = [sys.executable, "-m", "ichd", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
           str(root / "data"), "--token-file", str(token_file), "--device", "cpu",
           # a DICOM node whose series stay "receiving" for the whole module (test_worklist_shows_...)
           "--dicom-port", str(dicom_port), "--dicom-idle-timeout", str(DICOM_IDLE_S)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ichd serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if _get_json(url + "/health").get("status") == "ok":
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ichd serve did not answer /health in {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield Server(url=url, log=log, dicom_port=dicom_port)
    finally:
        stop_process(proc, timeout=30)
        _keep(log)


def _artifacts(default: Path) -> Path:
    out = Path(os.environ.get("ICHD_E2E_ARTIFACTS") or default)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _keep(path: Path) -> None:
    if os.environ.get("ICHD_E2E_ARTIFACTS") and path.is_file():
        shutil.copy2(path, _artifacts(path.parent) / path.name)


@pytest.fixture(scope="module")
def series_files(data_root: Path) -> list[Path]:
    folder = data_root / "rsna-series" / "dicom" / SERIES
    files = sorted(folder.glob("*.dcm"))
    if not files:
        pytest.fail(f"{folder} holds no DICOM files")
    return files


def test_viewer_in_a_real_browser(chromium: str, server: Server, series_files: list[Path], tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)  # a fresh temporary profile
        try:
            study_id = _upload_and_view(browser, expect, server, series_files, tmp_path)
            _open_with_token_in_the_link(browser, expect, server, study_id)
        finally:
            browser.close()


def _upload_and_view(browser: Any, expect: Any, server: Server, files: list[Path], tmp_path: Path) -> str:
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    requests: list[Any] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    # no token yet: the page asks for it (the one 401 of the test, logged by the browser)
    page.goto(server.url + "/viewer/")
    expect(page.locator("#token-view")).to_be_visible()
    assert [r.url for r in requests if "/v1/" in r.url] == [server.url + "/v1/studies"]
    problems.clear()
    requests.clear()
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#list-view")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('ichd.viewer.token')") == TOKEN

    # upload the series through the form; the list polls until the job is done
    page.set_input_files("#upload-files", [str(p) for p in files])
    expect(page.locator("#upload-chosen")).to_contain_text(f"{len(files)} files")
    page.click("#upload-button")
    expect(page.locator("#upload-status")).to_contain_text("uploaded")
    row = page.locator("#studies tbody tr").first
    expect(row).to_have_attribute("data-status", "done", timeout=JOB_TIMEOUT_MS)
    study_id = row.get_attribute("data-study")
    study = server.api(f"/v1/studies/{study_id}")
    scan = study["series"][0]
    expect(row.locator(".findings-cell")).to_contain_text(f"any {round(scan['scan']['any'] * 100)} %")

    # the study: image, summary, warnings, curve, model card
    row.locator("a", has_text="Open").click()
    expect(page.locator("#study-body")).to_be_visible()
    result = server.api(f"/v1/studies/{study_id}/result")
    n = result["n_slices"]
    assert n == len(files)
    img = page.locator("#slice-img")
    any_probs = [s["probabilities"]["any"] for s in result["slices"]]
    start = any_probs.index(max(any_probs))  # the viewer opens at the most suspicious slice
    _expect_slice(expect, page, start, n)
    # the title names the series (its description), the source and the time, not only a date
    expect(page.locator("#study-title")).to_contain_text("upload")
    # orientation markers from the series' ImageOrientationPatient (standard axial: the patient's right on the left)
    for side, letter in (("left", "R"), ("right", "L"), ("top", "A"), ("bottom", "P")):
        expect(page.locator(f"#orient-{side}")).to_have_text(letter)
        expect(page.locator(f"#orient-{side}")).to_be_visible()
    assert img.get_attribute("src").startswith("blob:")
    assert page.evaluate("document.getElementById('slice-img').naturalWidth") > 0
    positive = [lab for lab, v in result["scan_positive"].items() if v]
    expect(page.locator("#findings")).to_contain_text("Hemorrhage suspected" if positive else "No hemorrhage")
    for lab in positive:
        expect(page.locator("#summary tr.pos", has_text=lab)).to_have_count(1)
    for w in result["warnings"]:
        expect(page.locator("#warnings")).to_contain_text(w["code"])
    expect(page.locator("#curve-svg polyline")).to_have_count(6)
    model = server.api("/v1/model")
    expect(page.locator("#model-line")).to_contain_text(f"{model['name']} {model['version']}")
    page.click("#model-details summary")
    expect(page.locator("#model-card")).to_contain_text("Model card")

    # scrolling: keys and the mouse wheel over the image (up = superior = higher index)
    page.keyboard.press("Home")
    _expect_slice(expect, page, 0, n)
    box = page.locator("#stage").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        page.mouse.wheel(0, -120)
    _expect_slice(expect, page, 3, n)
    page.mouse.wheel(0, 120)
    _expect_slice(expect, page, 2, n)
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    _expect_slice(expect, page, 4, n)
    page.keyboard.press("ArrowDown")
    _expect_slice(expect, page, 3, n)
    page.keyboard.press("End")
    _expect_slice(expect, page, n - 1, n)

    # the probability curve: a click jumps to that slice (and moves the marker)
    target = start
    svg_box = page.locator("#curve-svg").bounding_box()
    x = svg_box["x"] + svg_box["width"] * (CURVE_L + target * (CURVE_W - CURVE_L - CURVE_R) / (n - 1)) / CURVE_W
    page.mouse.click(x, svg_box["y"] + svg_box["height"] / 2)
    _expect_slice(expect, page, target, n)

    # window preset and Grad-CAM overlay: new images fetched with the token and shown
    with page.expect_response(lambda r: "/slices/" in r.url and "window=subdural" in r.url) as resp:
        page.click("#windows button[data-window=subdural]")
    assert resp.value.status == 200 and resp.value.headers["content-type"] == "image/png"
    expect(img).to_have_attribute("data-window", "subdural")
    overlay = next((lab for lab in positive if lab != "any"), "any")
    with page.expect_response(lambda r: "/slices/" in r.url and f"overlay={overlay}" in r.url,
                              timeout=60_000) as resp:
        page.click(f"#overlays button[data-overlay={overlay}]")
    assert resp.value.status == 200 and resp.value.headers["content-type"] == "image/png"
    expect(img).to_have_attribute("data-overlay", overlay)
    expect(page.locator(f"#overlays button[data-overlay={overlay}]")).to_have_attribute("aria-pressed", "true")
    expect(page.locator(f"#curve-svg polyline.hl[data-label={overlay}]")).to_have_count(1)
    assert page.evaluate("document.getElementById('slice-img').naturalWidth") > 0
    _keep_screenshot(page, tmp_path)

    page.keyboard.press("ArrowUp")  # scrolling keeps the overlay
    _expect_slice(expect, page, min(target + 1, n - 1), n)
    expect(img).to_have_attribute("data-overlay", overlay)
    page.keyboard.press("o")  # O toggles it off
    expect(img).to_have_attribute("data-overlay", "")

    # every request stayed on the service; every data request carried the token
    for r in requests:
        assert r.url.startswith(server.url + "/") or r.url.startswith(("data:", "blob:")), r.url
        if r.url.startswith(server.url + "/v1/"):
            assert r.all_headers().get("authorization") == f"Bearer {TOKEN}", r.url
    assert any("overlay=" in r.url for r in requests)
    assert not problems, problems
    context.close()
    return str(study_id)


def _expect_slice(expect: Any, page: Any, index: int, n: int) -> None:
    """The viewer shows slice ``index``: label, slider, curve marker, and the image of that slice."""
    expect(page.locator("#slice-label")).to_have_attribute("data-index", str(index))
    expect(page.locator("#slice-label")).to_contain_text(f"Slice {index} of 0–{n - 1}")
    expect(page.locator("#curve-marker")).to_have_attribute("data-index", str(index))
    expect(page.locator("#slice-img")).to_have_attribute("data-slice", str(index))
    assert page.locator("#slice-range").input_value() == str(index)


def _keep_screenshot(page: Any, tmp_path: Path) -> None:
    path = _artifacts(tmp_path) / "viewer-e2e.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    print(f"screenshot: {path}")


def _open_with_token_in_the_link(browser: Any, expect: Any, server: Server, study_id: str) -> None:
    """The link `ichd serve` prints (token in the fragment) opens signed in, and the token leaves the address bar."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server.url}/viewer/#token={TOKEN}&study={study_id}")
    expect(page.locator("#study-body")).to_be_visible()
    assert "token" not in page.url and f"study={study_id}" in page.url
    assert page.evaluate("sessionStorage.getItem('ichd.viewer.token')") == TOKEN
    expect(page.locator("#slice-img")).to_have_attribute("src", re.compile(r"^blob:"))
    context.close()


def test_worklist_shows_a_series_being_received_over_dicom(chromium: str, server: Server, series_files: list[Path],
                                                           tmp_path: Path) -> None:
    """Three instances of a real series sent to the DICOM node (pynetdicom's SCU; the SOP Class UID copied from
    the file meta into the data set, as a PACS holds it): the API and the viewer's list show the series as
    "receiving 3 instances", with the sender, before the idle timeout makes it a study."""
    import pydicom
    from playwright.sync_api import expect, sync_playwright
    from pynetdicom import AE

    sent = []
    for f in series_files[:3]:
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        sent.append(ds)
    ae = AE(ae_title="CTSCANNER")
    ae.add_requested_context(str(sent[0].SOPClassUID), str(sent[0].file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="ICHD")
    assert assoc.is_established
    try:
        assert [int(assoc.send_c_store(ds).Status) for ds in sent] == [0, 0, 0]
    finally:
        assoc.release()
    (receiving,) = server.api("/v1/studies")["receiving"]
    assert receiving["n_instances"] == 3 and receiving["calling_ae"] == "CTSCANNER"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1360, "height": 700}).new_page()
            page.goto(f"{server.url}/viewer/#token={TOKEN}")
            row = page.locator('tr[data-status="receiving"]')
            expect(row).to_have_count(1)
            expect(row).to_contain_text("receiving 3 instances")
            expect(row).to_contain_text("from CTSCANNER")
            page.screenshot(path=str(_artifacts(tmp_path) / "viewer-receiving.png"))
        finally:
            browser.close()


def _listed(study_id: str, status: str, created: str, *, any_p: float | None = None, call: str | None = None,
            findings: tuple[str, ...] = (), description: str = "", source: str = "upload") -> dict[str, Any]:
    series = [] if any_p is None else [{
        "index": 0, "series_instance_uid": f"1.2.{study_id}", "study_instance_uid": "1.2", "n_slices": 34,
        "scan": {"any": any_p}, "scan_positive": {"any": bool(findings)}, "findings": list(findings),
        "scan_call": call, "not_assessable_reason": "contrast" if call == "not_assessable" else None,
        "in_training_data": False, "series_description": description, "second_reader": None}]
    return {"study_id": study_id, "job_id": study_id, "status": status, "created_at": created, "source": source,
            "n_files": 34, "n_bytes": 1 << 20, "error": "cannot read" if status == "failed" else None,
            "series": series, "links": {}}


def test_worklist_sorts_by_urgency_and_filters(chromium: str, server: Server) -> None:
    """The list as a triage worklist, on a crafted study list (the page's request answered by Playwright): positive
    and not-assessable studies first (highest probability first), then those in progress or failed (newest first),
    then negative ones (highest probability first); received time, source, series description and slices shown;
    the sort and filter selectors."""
    from playwright.sync_api import expect, sync_playwright

    ids = {name: f"{k:032x}" for k, name in enumerate(
        ["neg_low", "pos_low", "running", "na", "neg_high", "pos_high", "failed"], start=1)}
    studies = [
        _listed(ids["neg_low"], "done", "2026-12-04T10:06:00+00:00", any_p=0.05, call="negative"),
        _listed(ids["pos_low"], "done", "2026-12-04T10:01:00+00:00", any_p=0.55, call="positive",
                findings=("any", "subdural"), description="Head 5mm", source="dicom"),
        _listed(ids["running"], "running", "2026-12-04T10:05:00+00:00"),
        _listed(ids["na"], "done", "2026-12-04T10:02:00+00:00", any_p=0.30, call="not_assessable"),
        _listed(ids["neg_high"], "done", "2026-12-04T10:03:00+00:00", any_p=0.20, call="negative"),
        _listed(ids["pos_high"], "done", "2026-12-04T10:00:00+00:00", any_p=0.97, call="positive", findings=("any",)),
        _listed(ids["failed"], "failed", "2026-12-04T10:04:00+00:00"),
    ]
    body = json.dumps({"studies": studies, "receiving": []})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1360, "height": 800}).new_page()
            page.route("**/v1/studies", lambda route: route.fulfill(status=200, content_type="application/json",
                                                                    body=body))
            page.goto(f"{server.url}/viewer/#token={TOKEN}")
            rows = page.locator("#studies tbody tr")
            expect(rows).to_have_count(7)

            def order() -> list[str]:
                by_id = {v: k for k, v in ids.items()}
                return [by_id[i] for i in rows.evaluate_all("rs => rs.map(r => r.dataset.study)")]

            assert order() == ["pos_high", "pos_low", "na", "running", "failed", "neg_high", "neg_low"]
            pos_low = page.locator(f'tr[data-study="{ids["pos_low"]}"]')
            for text in ("DICOM", "Head 5mm", "34", "positive: SDH"):
                expect(pos_low).to_contain_text(text)
            page.select_option("#sort-select", "received")
            assert order() == ["neg_low", "running", "failed", "neg_high", "na", "pos_low", "pos_high"]
            page.select_option("#filter-select", "attention")
            assert sorted(order()) == ["na", "pos_high", "pos_low"]
            page.select_option("#filter-select", "pending")
            assert order() == ["running"]
            page.select_option("#filter-select", "negative")
            assert sorted(order()) == ["neg_high", "neg_low"]
        finally:
            browser.close()
