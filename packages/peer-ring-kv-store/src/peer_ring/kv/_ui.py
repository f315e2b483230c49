"""``GET /ui``: the live web view of the ring, served from static files in the wheel.

The page (``ui/index.html``, ``ui/app.js``, ``ui/app.css``: no build step, no CDN, no
third-party code) polls ``/cluster``, ``/admin/ring`` and ``/admin/nodes`` of the node that
served it and draws the members, partition ownership around the ring, handoffs as they
happen and each node's load. The static files carry no data, so they are served without
the bearer token; the page sends the token (taken from ``#token=...`` in its URL or typed
into it) with its API requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Final

from aiohttp import web

#: Content types of the shipped files.
_FILES: Final = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
#: Paths served without the bearer token (static files only).
UI_PATHS: Final = frozenset({"/ui", "/ui/", *(f"/ui/{name}" for name in _FILES)})


def _read(name: str) -> bytes:
    return resources.files("peer_ring.kv").joinpath("ui", name).read_bytes()


def install_ui(router: web.UrlDispatcher) -> None:
    """Add ``/ui`` (redirect to ``/ui/``), ``/ui/`` and the page's assets to ``router``."""
    # Read once: the files are part of the installed package and never change at run time.
    bodies = {name: _read(name) for name in _FILES}

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    def serve(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(
                body=bodies[name],
                content_type=_FILES[name],
                charset="utf-8",
                headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
            )

        return handler

    router.add_get("/ui", redirect, name="ui_redirect")
    router.add_get("/ui/", serve("index.html"), name="ui")
    for name in _FILES:
        router.add_get(f"/ui/{name}", serve(name), name=f"ui_{name.replace('.', '_')}")
