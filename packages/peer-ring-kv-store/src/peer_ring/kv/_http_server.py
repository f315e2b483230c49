"""Serving a :class:`~peer_ring.kv._server.KVHttpApi` on ``host:port``: binding the aiohttp
application (plain HTTP or HTTPS), reporting the bound address, stopping."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from peer_ring.core import NotRunningError

if TYPE_CHECKING:
    from peer_ring.kv._server import KVHttpApi


class KVHttpServer:
    """Serves a :class:`KVHttpApi` on ``host:port`` (port 0 picks a free port).

    Example:
        >>> server = KVHttpServer(KVHttpApi(store), "127.0.0.1", 8101)  # doctest: +SKIP
        >>> await server.start()
        >>> server.address
        ('127.0.0.1', 8101)
    """

    def __init__(
        self, api: KVHttpApi, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.api = api
        self._host = host
        self._port = port
        # HTTPS when given (see peer_ring.kv._http_tls for a context that follows its files).
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None
        self._address: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``.

        Raises:
            NotRunningError: the server is not started.
        """
        if self._address is None:
            raise NotRunningError("the HTTP server is not started")
        return self._address

    @property
    def url(self) -> str:
        """``http://host:port`` (``https://`` with TLS) of the running server."""
        host, port = self.address
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            OSError: the address cannot be bound (in use, not local...).
        """
        # access_log=None: a line per request would drown the node's own logs; request
        # counts and latencies are in /metrics.
        runner = web.AppRunner(self.api.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        self._address = (str(bound[0]), int(bound[1]))

    async def stop(self) -> None:
        """Stop accepting and close connections. Idempotent."""
        runner, self._runner = self._runner, None
        self._address = None
        if runner is not None:
            await runner.cleanup()
