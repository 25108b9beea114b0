"""The web viewer of ``ichd serve``: a study list, an upload form and a slice viewer at ``/viewer/``.

The viewer is three static files shipped with the package (``ichd/service/static/viewer/``: ``index.html``,
``viewer.js``, ``viewer.css``; plain HTML, vanilla JS and CSS, nothing loaded from elsewhere). They hold no patient
data, so they are served without the token (:data:`VIEWER_PATHS` joins the middleware's open allow-list); every
request the page makes for data goes through ``fetch()`` with ``Authorization: Bearer <token>``. The page asks for
the token once and keeps it in ``sessionStorage``; it also takes it from the URL fragment ``#token=...`` (a fragment
never reaches the server or its log), which is how ``ichd serve`` prints an openable link (:func:`viewer_url`).

The viewer's pages carry :data:`VIEWER_CSP`: scripts, styles and requests from the service itself only, images from
it or from ``blob:`` URLs (slice PNGs are fetched with the token header and shown as blob URLs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from functools import lru_cache
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from ichd.paths import package_resource

#: Where the viewer's files lie inside the package.
ASSET_DIR: tuple[str, ...] = ("service", "static", "viewer")
#: The viewer's URL (relative links in ``index.html`` need the trailing slash).
VIEWER_PATH = "/viewer/"
#: URL path -> (file name, media type) of each viewer file.
ASSETS: dict[str, tuple[str, str]] = {
    VIEWER_PATH: ("index.html", "text/html; charset=utf-8"),
    "/viewer/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
    "/viewer/viewer.css": ("viewer.css", "text/css; charset=utf-8"),
}
#: Paths served without the token: the viewer's static files and the redirect to them (no patient data).
VIEWER_PATHS = frozenset({"/viewer", *ASSETS})
#: Content-Security-Policy of the viewer's files: nothing inline, nothing from another origin; slice images are
#: ``blob:`` URLs, the favicon is an empty ``data:`` URL.
VIEWER_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
              "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@lru_cache(maxsize=len(ASSETS))
def asset_bytes(name: str) -> bytes:
    """The content of viewer file ``name`` (read once, on first request)."""
    return package_resource(*ASSET_DIR, name).read_bytes()


def add_viewer_routes(app: FastAPI) -> None:
    """Add ``GET /viewer`` (redirect) and one ``GET`` route per file in :data:`ASSETS` to ``app``."""

    @app.get("/viewer", include_in_schema=False)
    async def viewer_redirect() -> RedirectResponse:
        return RedirectResponse(VIEWER_PATH, status_code=307)

    for path, (name, media_type) in ASSETS.items():
        app.add_api_route(path, _asset_endpoint(name, media_type), methods=["GET"], include_in_schema=False,
                          name=f"viewer:{name}")


def _asset_endpoint(name: str, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def endpoint() -> Response:
        return Response(asset_bytes(name), media_type=media_type, headers={"Content-Security-Policy": VIEWER_CSP})

    endpoint.__name__ = f"viewer_{name.replace('.', '_')}"
    return endpoint


def viewer_url(host: str, port: int, token: str | None = None) -> str:
    """The viewer's address for a service listening on ``host:port``; with ``token``, in the fragment (opens
    signed in). A wildcard address (``0.0.0.0``, ``::``) becomes the loopback address of its family."""
    name = host.strip().strip("[]")
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        shown = name or "127.0.0.1"
    else:
        if addr.is_unspecified:
            addr = ipaddress.ip_address("::1" if addr.version == 6 else "127.0.0.1")
        shown = f"[{addr}]" if addr.version == 6 else str(addr)
    url = f"http://{shown}:{port}{VIEWER_PATH}"
    return f"{url}#token={quote(token, safe='')}" if token else url
