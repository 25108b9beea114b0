#!/usr/bin/env python
"""Screenshot of the web viewer of ``ichd serve`` on a real series (docs/images/viewer.png).

Starts ``ichd serve`` (default model, a random token, a temporary data folder, a free loopback port), uploads one
series of ``$ICHD_DATA/rsna-series`` as a zip, waits for its job, opens the viewer in headless chromium (Playwright
on the system browser; no ``playwright install``) at the most suspicious slice with a Grad-CAM overlay, and saves
a screenshot::

    python scripts/viewer_screenshot.py                       # -> docs/images/viewer.png
    python scripts/viewer_screenshot.py --series ID_3d2ee1643b --overlay subarachnoid --window subdural
    python scripts/viewer_screenshot.py --worklist            # + docs/images/worklist.png

``--worklist`` also uploads ``--extra-series``, sends the first instances of ``--receiving-series`` to the
service's DICOM node (which then shows them as "receiving", its idle timeout being long) and saves the study list,
sorted by urgency, as ``--worklist-out``.

Needs ``pip install playwright`` and ``/usr/bin/chromium`` (``--chromium``). The default series, ID_7518324893
(IPH, IVH, SAH), is in the default model's training data: the picture shows the viewer, not the model's accuracy.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from ichd.constants import LABELS
from ichd.errors import IchdError
from ichd.paths import data_dir

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOWS = ("brain", "subdural", "soft_tissue", "bone")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--series", default="ID_7518324893", help="series folder name under rsna-series/dicom/")
    p.add_argument("--out", type=Path, default=Path("docs/images/viewer.png"), help="the PNG to write")
    p.add_argument("--overlay", default="intraparenchymal", choices=("", *LABELS), help="Grad-CAM class ('' = off)")
    p.add_argument("--window", default="brain", choices=WINDOWS)
    p.add_argument("--model", default="default", help="model for ichd serve --model")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="the chromium executable")
    p.add_argument("--worklist", action="store_true", help="also save the study list (worklist) picture")
    p.add_argument("--worklist-out", type=Path, default=Path("docs/images/worklist.png"))
    p.add_argument("--extra-series", nargs="*", default=["ID_3d2ee1643b", "ID_9d97cf289b"],
                   help="more rsna-series to upload for the worklist")
    p.add_argument("--receiving-series", default="ID_a61d046d72",
                   help="rsna-series whose first instances are sent over DICOM (shown as receiving)")
    p.add_argument("--width", type=int, default=1360)
    p.add_argument("--height", type=int, default=980)
    return p.parse_args(argv)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, token: str | None = None, *, data: bytes | None = None,
          content_type: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if content_type:
        headers["Content-Type"] = content_type
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as resp:
        return json.loads(resp.read())


def start_server(root: Path, token: str, model: str,
                 dicom_port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``ichd serve`` on a free loopback port (with ``dicom_port``: a DICOM node whose series stay "receiving"
    for 10 minutes), once ``/health`` says ok; (process, base URL)."""
    (root / "token").write_text(token + "\n")
    port = _free_port()
    dicom = [] if dicom_port is None else ["--dicom-port", str(dicom_port), "--dicom-idle-timeout", "600"]
    env = {k: v for k, v in os.environ.items() if k != "ICHD_TOKEN"}
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - the server writes it while it runs
    proc = subprocess.Popen([sys.executable, "-m", "ichd", "serve", "--port", str(port), "--data-dir",
                             str(root / "data"), "--token-file", str(root / "token"), "--model", model, *dicom],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ichd serve exited:\n{(root / 'serve.log').read_text()[-2000:]}")
        try:
            if _call(url + "/health").get("status") == "ok":
                return proc, url
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.25)
    stop_server(proc)
    raise SystemExit("ichd serve did not start in 180 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def upload(url: str, token: str, folder: Path) -> str:
    """Upload ``folder``'s DICOM files as one zip, wait for the job; the study id."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.glob("*.dcm")):
            zf.write(path, path.name)
    out = _call(url + "/v1/studies", token, data=buf.getvalue(), content_type="application/zip")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job = _call(f"{url}/v1/jobs/{out['job_id']}", token)
        if job["status"] == "done":
            return str(out["study_id"])
        if job["status"] == "failed":
            raise SystemExit(f"the job failed: {job['error']}")
        time.sleep(0.5)
    raise SystemExit("the job did not finish in 600 s")


def screenshot(url: str, token: str, study_id: str, args: argparse.Namespace) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": args.width, "height": args.height}).new_page()
            page.set_default_timeout(120_000)
            page.goto(f"{url}/viewer/#token={token}&study={study_id}")
            expect(page.locator("#study-body")).to_be_visible()
            img = page.locator("#slice-img")
            expect(img).to_have_attribute("data-slice", page.locator("#slice-label").get_attribute("data-index"))
            page.click(f"#windows button[data-window={args.window}]")
            expect(img).to_have_attribute("data-window", args.window)
            page.click(f"#overlays button[data-overlay='{args.overlay}']")
            expect(img).to_have_attribute("data-overlay", args.overlay)
            expect(page.locator("#model-line")).not_to_be_empty()
            page.mouse.move(0, 0)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
        finally:
            browser.close()


def send_some(folder: Path, port: int, n: int = 12) -> None:
    """C-STORE the first ``n`` instances of ``folder`` to the DICOM node (SOP Class UID copied from the file meta
    into the data set, where the RSNA files lack it)."""
    import pydicom
    from pynetdicom import AE

    datasets = []
    for path in sorted(folder.glob("*.dcm"))[:n]:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        datasets.append(ds)
    ae = AE(ae_title="CTSCANNER")
    ae.add_requested_context(str(datasets[0].SOPClassUID), str(datasets[0].file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="ICHD")
    if not assoc.is_established:
        raise SystemExit("the DICOM node refused the association")
    try:
        for ds in datasets:
            assoc.send_c_store(ds)
    finally:
        assoc.release()


def worklist_screenshot(url: str, token: str, args: argparse.Namespace) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": args.width, "height": 560}).new_page()
            page.goto(f"{url}/viewer/#token={token}")
            expect(page.locator('tr[data-status="receiving"]')).to_have_count(1)
            expect(page.locator('tr[data-status="done"]')).to_have_count(1 + len(args.extra_series))
            page.mouse.move(0, 0)
            args.worklist_out.parent.mkdir(parents=True, exist_ok=True)
            page.locator("#list-view").screenshot(path=str(args.worklist_out))
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not os.access(args.chromium, os.X_OK):
        raise SystemExit(f"no chromium at {args.chromium} (apt-get install chromium, or pass --chromium)")
    try:
        folder = data_dir() / "rsna-series" / "dicom" / args.series
    except IchdError as e:
        raise SystemExit(f"error: {e}") from None
    if not folder.is_dir():
        raise SystemExit(f"no series folder {folder}")
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="ichd-viewer-shot-") as tmp:
        dicom_port = _free_port() if args.worklist else None
        proc, url = start_server(Path(tmp), token, args.model, dicom_port)
        try:
            study_id = upload(url, token, folder)
            if args.worklist:
                for name in args.extra_series:
                    upload(url, token, folder.parent / name)
                assert dicom_port is not None
                send_some(folder.parent / args.receiving_series, dicom_port)
                worklist_screenshot(url, token, args)
                print(f"wrote {args.worklist_out}")
            screenshot(url, token, study_id, args)
        finally:
            stop_server(proc)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
