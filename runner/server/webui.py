"""The browser page: a chat and model manager served from the package's `ui/` folder at /ui/.

`GET /` stays the plain-text health check for API clients ("lm is running"); a browser, whose
Accept header asks for HTML, is redirected to /ui/. The page's static files are the only thing
served without an API key (security.PUBLIC_RESOURCES), so that the page can load and ask for one:
every call it makes goes to the API routes with the key as a bearer token.

Files are looked up in a table of what ships in `ui/` (no path from the request ever reaches the
filesystem), and each answer carries a Content-Security-Policy that allows only this origin's own
scripts, styles, images and connections: model output that slipped past the sanitizer still could
not run a script or fetch anything from elsewhere.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).with_name("ui")

_TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml", ".png": "image/png", ".txt": "text/plain", ".json": "application/json"}
_TEXT = {".html", ".js", ".mjs", ".css", ".svg", ".txt", ".json"}

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def shipped_files(root: Path = UI_DIR) -> dict[str, Path]:
    """Every servable file under `root`, by its URL path below /ui/ ("js/chat.js")."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in _TYPES and not p.name.startswith(".")}


def prefers_html(accept: str) -> bool:
    """Whether an Accept header names text/html (with a q above 0): browsers do, API clients send */* or JSON."""
    for part in accept.split(","):
        kind, *params = (x.strip() for x in part.split(";"))
        if kind.lower() in ("text/html", "application/xhtml+xml"):
            q = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


async def root(request: web.Request) -> web.Response:
    if prefers_html(request.headers.get("Accept", "")):
        raise web.HTTPFound("/ui/", headers={"Vary": "Accept"})
    return web.Response(text="lm is running", headers={"Vary": "Accept"})


def _file_response(path: Path) -> web.Response:
    content_type = _TYPES[path.suffix]
    return web.Response(body=path.read_bytes(), content_type=content_type,
                        charset="utf-8" if path.suffix in _TEXT else None, headers=HEADERS)


def add_routes(app: web.Application) -> None:
    files = shipped_files()

    async def index(_request: web.Request) -> web.Response:
        return await asyncio.to_thread(_file_response, files["index.html"])

    async def asset(request: web.Request) -> web.Response:
        path = files.get(request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound()
        return await asyncio.to_thread(_file_response, path)

    async def to_index(_request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    app.router.add_get("/", root)
    # These names are security.PUBLIC_RESOURCES: served without a key.
    app.router.add_get("/ui", to_index, name="ui-redirect")
    app.router.add_get("/ui/", index, name="ui-index")
    app.router.add_get("/ui/{path:.+}", asset, name="ui-asset")
