"""The web viewer's files (self-contained: nothing from another origin, nothing inline), ``GET /v1/model`` and the
viewer link ``ichd serve`` prints. The viewer in a real browser: tests/e2e/test_viewer_browser.py."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from ichd.service.viewer import ASSETS, VIEWER_CSP, asset_bytes, viewer_url

SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture
def client(client_for, tmp_path: Path):
    return client_for(tmp_path / "data", workers=0)


def _text(name: str) -> str:
    return asset_bytes(name).decode("utf-8")


def test_viewer_files_are_shipped_and_self_contained():
    html, js, css = _text("index.html"), _text("viewer.js"), _text("viewer.css")
    for name, text in (("index.html", html), ("viewer.js", js), ("viewer.css", css)):
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text))
        assert urls <= {SVG_NAMESPACE}, (name, urls)  # no CDN, no web font, no remote anything
        assert "@import" not in text and "innerHTML" not in text and "eval(" not in text, name
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.DOTALL)
    assert scripts == [(' src="viewer.js" defer', "")]  # one script, from the service, nothing inline
    assert not re.search(r"\sstyle=|\son[a-z]+=|<style", html)  # no inline style or handlers (the CSP forbids them)
    assert re.search(r'<link rel="stylesheet" href="viewer.css">', html)
    # the ids the script looks up all exist in the page
    wanted = set(re.findall(r'\$\("([\w-]+)"\)', js))
    present = set(re.findall(r'\bid="([\w-]+)"', html))
    assert wanted - {"curve-marker", "curve-dot"} <= present, wanted - present


def test_viewer_csp_allows_its_own_scripts_and_blob_images(client):
    r = client.get("/viewer/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
    assert r.headers["content-security-policy"] == VIEWER_CSP
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["connect-src"] == "'self'"
    assert "blob:" in csp["img-src"].split() and "'unsafe-inline'" not in VIEWER_CSP
    for path, (_, media_type) in ASSETS.items():
        assert client.get(path).headers["content-type"] == media_type


def test_model_endpoint_needs_the_token_and_gives_the_card(client, h):
    assert client.get("/v1/model").status_code == 401
    r = client.get("/v1/model", headers=h.AUTH)
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["name"] == "test-model" and m["version"] == "0.0.1" and m["source"] == "bundle"
    assert re.fullmatch(r"[0-9a-f]{64}", m["sha256"]) and m["thresholds"]["any"] == 0.5
    assert m["model_card"].startswith("# test model") and not m["sequence_stage"]
    assert m["evidence_map"]["method"] == "gradcam" and m["evidence_map"]["name"] == "Grad-CAM"  # no lesion head
    assert "path" not in m and str(Path.home()) not in r.text  # no server paths
    assert "/v1/model" in client.app.openapi()["paths"]


def test_viewer_url():
    assert viewer_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/viewer/"
    assert viewer_url("0.0.0.0", 80) == "http://127.0.0.1:80/viewer/"
    assert viewer_url("::", 8000) == "http://[::1]:8000/viewer/"
    assert viewer_url("::1", 8000) == "http://[::1]:8000/viewer/"
    assert viewer_url("ct-server.local", 9000) == "http://ct-server.local:9000/viewer/"
    assert viewer_url("localhost", 1, "a+b/c#d") == "http://localhost:1/viewer/#token=a%2Bb%2Fc%23d"


def test_serve_prints_the_viewer_link_but_not_the_token_when_not_on_a_terminal(capsys, caplog, h):
    from ichd.cli.serve import _announce_viewer
    from ichd.utils.logging import get_logger

    with caplog.at_level(logging.INFO, logger="ichd.service"):
        _announce_viewer(h.TOKEN, host="127.0.0.1", port=8123, log=get_logger("ichd.service"))
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8123/viewer/" in err and h.TOKEN not in err
    assert "web viewer at http://127.0.0.1:8123/viewer/" in caplog.text and h.TOKEN not in caplog.text


def test_serve_prints_an_openable_link_on_a_terminal(capsys, monkeypatch, h):
    import sys

    from ichd.cli.serve import _announce_viewer
    from ichd.utils.logging import get_logger

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _announce_viewer(h.TOKEN, host="0.0.0.0", port=8123, log=get_logger("ichd.service"))
    assert f"http://127.0.0.1:8123/viewer/#token={h.TOKEN}" in capsys.readouterr().err


def test_serve_writes_the_token_link_to_an_owner_only_file_when_not_on_a_terminal(capsys, caplog, tmp_path, h):
    """Redirected output (a service manager, tee) never holds the token; the link that opens the viewer signed in
    is in DATA/viewer-link.txt, mode 0600, and the printed line says so."""
    import logging
    import stat

    from ichd.cli.serve import _announce_viewer
    from ichd.utils.logging import get_logger

    with caplog.at_level(logging.INFO, logger="ichd.service"):
        _announce_viewer(h.TOKEN, host="0.0.0.0", port=8123, log=get_logger("ichd.service"), data_dir=tmp_path)
    err = capsys.readouterr().err
    link_file = tmp_path / "viewer-link.txt"
    assert str(link_file) in err and "#token=" in err and h.TOKEN not in err and h.TOKEN not in caplog.text
    assert link_file.read_text() == f"http://127.0.0.1:8123/viewer/#token={h.TOKEN}\n"
    assert stat.S_IMODE(link_file.stat().st_mode) == 0o600
    _announce_viewer(None, host="127.0.0.1", port=8123, log=get_logger("ichd.service"), data_dir=tmp_path)
    assert "http://127.0.0.1:8123/viewer/ (no token" in capsys.readouterr().err
