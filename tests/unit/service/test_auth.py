"""Authentication: every route of the app but /health and the viewer's static files refuses a missing or wrong
bearer token (the routes are read from the app, so a new endpoint cannot be forgotten); the token's sources; no
non-loopback bind without one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ichd.service.config import check_bind, is_loopback, load_token
from ichd.service.viewer import ASSETS, VIEWER_PATHS

FAKE_ID = "0123456789abcdef0123456789abcdef"


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route of the app, path parameters filled in."""
    out = []
    for route in app.routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        assert path is not None and methods, f"route {route!r} cannot be checked: a router or mount?"
        for method in sorted(methods - {"HEAD"}):
            out.append((method, re.sub(r"\{[^}]+\}", lambda m: "1" if m.group(0) == "{index}" else FAKE_ID, path)))
    return out


@pytest.fixture
def client(client_for, tmp_path: Path):
    return client_for(tmp_path / "data", workers=0)  # no model: authentication only


def test_every_endpoint_but_health_and_viewer_files_needs_the_token(client, h):
    from ichd.service.app import OPEN_PATHS

    routes = _routes(client.app)
    paths = {p for _, p in routes}
    # the iteration sees the whole API (and the docs), not a subset
    assert {"/v1/studies", f"/v1/jobs/{FAKE_ID}", f"/v1/studies/{FAKE_ID}/slices/1.png", "/v1/model", "/docs",
            "/openapi.json"} <= paths
    # the only open paths: liveness, the API docs and the viewer's static files (no patient data), all real routes
    assert OPEN_PATHS == {"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/viewer",
                          *ASSETS} and OPEN_PATHS <= paths
    assert {re.sub(r"\{[^}]+\}", FAKE_ID, p).replace(f"{FAKE_ID}.png", "1.png")
            for p in client.app.openapi()["paths"]} <= paths
    for method, path in routes:
        if path in OPEN_PATHS:
            continue
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"},
                        {"Authorization": f"Basic {h.TOKEN}"}, {"Authorization": f"Bearer {h.TOKEN}x"},
                        {"Authorization": "Bearer"}):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert set(r.json()) == {"error", "hint"} and "token" in r.json()["error"]
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = client.request(method, path, headers=h.AUTH)
        assert r.status_code != 401, (method, path)  # the right token passes (404/400/... for the fake ids)
    assert client.get("/health").status_code == 200
    assert client.get("/nowhere").status_code == 401  # unknown paths too: nothing is revealed without the token
    for path in ("/viewer/nowhere.js", "/viewer/../v1/studies", "/viewer//index.html", "/viewer/index.html"):
        assert client.get(path).status_code == 401, path  # only the exact viewer files are open


def test_api_docs_open_in_a_browser_without_the_token_and_the_api_stays_closed(client, h):
    """A browser cannot send the bearer header when it opens /docs: the docs and the schema are open, they declare
    the bearer scheme (Swagger's Authorize button), and the requests made from the page still need the token."""
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text and "swagger" in page.text.lower()
    assert client.get("/redoc").status_code == 200
    spec = client.get("/openapi.json").json()
    assert spec == client.get("/openapi.json", headers=h.AUTH).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "the service token (ICHD_TOKEN or --token-file)"}
    secured = [op for path, ops in spec["paths"].items() if path.startswith("/v1/") for op in ops.values()]
    assert secured and all(op.get("security") == [{"HTTPBearer": []}] for op in secured)
    assert client.get("/v1/studies").status_code == 401
    assert client.get("/v1/studies", headers=h.AUTH).status_code == 200


def test_viewer_files_are_open_and_hold_no_data(client, h):
    for path in sorted(VIEWER_PATHS):
        r = client.get(path, follow_redirects=False)
        if path == "/viewer":
            assert r.status_code == 307 and r.headers["location"] == "/viewer/"
            continue
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
        assert r.content == client.get(path, headers=h.AUTH).content  # the same with or without the token


def test_without_a_token_loopback_service_is_open(client_for, tmp_path: Path):
    client = client_for(tmp_path / "data", workers=0, token=None)
    assert client.get("/v1/studies").status_code == 200


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, h):
    from ichd.errors import InputError

    assert load_token(None, environ={}) is None
    assert load_token(None, environ={"ICHD_TOKEN": f"  {h.TOKEN}\n"}) == h.TOKEN
    f = tmp_path / "token"
    f.write_text(f"{h.TOKEN}-from-file\n# comment\n")
    assert load_token(f, environ={"ICHD_TOKEN": h.TOKEN}) == f"{h.TOKEN}-from-file"  # the file wins
    with pytest.raises(InputError, match="at least 16"):
        load_token(None, environ={"ICHD_TOKEN": "short"})
    f.write_text("\n")
    with pytest.raises(InputError, match="is empty"):
        load_token(f)
    with pytest.raises(InputError, match="cannot read --token-file"):
        load_token(tmp_path / "missing")


def test_loopback_addresses():
    for host in ("127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.org", ""):
        assert not is_loopback(host), host
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "x" * 32)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "example.org"])
def test_serve_refuses_a_public_address_without_a_token(host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]):
    from ichd.cli.main import run

    monkeypatch.delenv("ICHD_TOKEN", raising=False)
    data = tmp_path / "data"
    assert run(["serve", "--host", host, "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"refusing to listen on {host} without a token" in err and "--token-file" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not data.exists()  # refused before anything was opened or loaded


def test_serve_rejects_bad_token_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]):
    from ichd.cli.main import run

    monkeypatch.setenv("ICHD_TOKEN", "short")
    assert run(["serve", "--data-dir", str(tmp_path / "d")]) == 2
    assert "at least 16" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("")
    assert run(["serve", "--host", "0.0.0.0", "--token-file", str(empty), "--data-dir", str(tmp_path / "d")]) == 2
    assert "is empty" in capsys.readouterr().err
