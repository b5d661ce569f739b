"""The dashboard at /ui/: static files served by the daemon itself, no build step.

The page is plain HTML, CSS and JavaScript with one vendored library (Chart.js, MIT, in
static/ui/vendor with its licence). It signs in with the admin token or a tracker's viewer
token and reads the same HTTP API anyone can script against; nothing is fetched from
anywhere but this daemon, which the Content-Security-Policy below enforces in the browser.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Final

from aiohttp import web

NEEDS: Final = ()  # static files only: no service of the daemon
UI_DIR: Final = Path(__file__).resolve().parent / "static" / "ui"

# nothing inline, nothing from another origin; the player streams a recording from a
# signed link of this origin (an <audio src> cannot send an Authorization header)
CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; media-src 'self'; base-uri 'none'; form-action 'self'; "
              "frame-ancestors 'none'")
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
                 ".svg": "image/svg+xml", ".md": "text/plain", ".png": "image/png"}


def _assets() -> dict[str, tuple[bytes, str]]:
    """Every file under static/ui by its path there, read once: no path from a request
    ever reaches the filesystem."""
    out = {}
    for path in sorted(UI_DIR.rglob("*")):
        if path.is_file():
            ctype = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
            out[path.relative_to(UI_DIR).as_posix()] = (path.read_bytes(),
                                                        ctype or "application/octet-stream")
    return out


ASSETS: Final = _assets()


def _file(name: str) -> web.Response:
    body, ctype = ASSETS[name]
    charset = "utf-8" if ctype.startswith("text/") or ctype.endswith("+xml") else None
    return web.Response(body=body, content_type=ctype, charset=charset, headers=HEADERS)


async def index(request: web.Request) -> web.Response:
    return _file("index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return _file(name)


async def to_index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


def setup(http: web.Application) -> None:
    http.add_routes([
        web.get("/ui", to_index),
        web.get("/ui/", index),
        web.get("/ui/{name:.+}", asset),
    ])
