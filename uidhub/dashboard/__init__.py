"""GET /dashboard: the live operations page, served from this package's static files.

The page is plain HTML, CSS and JavaScript modules (no build step, nothing
fetched from another origin); it talks to /graphql over HTTP and to the
websocket with graphql-transport-ws, using a token the user types in. Every
response carries a Content-Security-Policy that allows only the page's own
origin, so even an injected string could not load or run anything foreign.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

STATIC_DIR = Path(__file__).resolve().parent
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# A host header is echoed into connect-src only when it looks like a host (and port): anything else would let a
# client write arbitrary policy text into its own response.
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def static_files() -> dict[str, Path]:
    """The servable files by name, listed once: a request can only ever name one of these (no path traversal)."""
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in MEDIA_TYPES}


def content_security_policy(request: Request) -> str:
    """Only this origin: scripts, styles, images and connections, the websocket included.

    CSP Level 3 lets 'self' match ws:/wss: on the same host (Chromium and Firefox do), but older engines do
    not, so the same-origin websocket URL is also named explicitly.
    """
    connect = "'self'"
    host = request.headers.get("host", "")
    if _HOST.match(host):
        connect += f" {'wss' if request.url.scheme == 'https' else 'ws'}://{host}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
        f"connect-src {connect}; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def security_headers(request: Request) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(request),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        # The files change with the installed version; revalidating is cheap and avoids a stale page after upgrade.
        "Cache-Control": "no-cache",
    }


def routes() -> list[BaseRoute]:
    """The page at /dashboard and its assets at /dashboard/<file>."""
    files = static_files()

    def serve(request: Request, name: str) -> Response:
        path = files.get(name)
        if path is None:
            return JSONResponse({"error": "not found"}, status_code=404, headers={"X-Content-Type-Options": "nosniff"})
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=security_headers(request))

    async def page(request: Request) -> Response:
        return serve(request, "index.html")

    async def asset(request: Request) -> Response:
        return serve(request, request.path_params["name"])

    async def slash(_request: Request) -> Response:
        return RedirectResponse("/dashboard", status_code=308)

    return [
        Route("/dashboard", page, methods=["GET", "HEAD"]),
        Route("/dashboard/", slash, methods=["GET", "HEAD"]),
        Route("/dashboard/{name}", asset, methods=["GET", "HEAD"]),
    ]
