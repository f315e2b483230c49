"""The ``/ui`` live view in a real headless Chromium, driven over the DevTools protocol.

Three real ``serve`` processes (with an HTTP token); Chromium opens
``/ui/#token=...`` on one of them; the page must show 3 members, draw the ring and list the
members' load, then show 2 members after a node is killed with SIGKILL. Skips without
Chromium on a laptop, fails in CI (``apt-get install chromium``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from peer_ring.kv._local_cluster import LocalCluster, allocate_addresses, loopback_aliases_available

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
TOKEN = "ui-test-token"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Bound of every wait on the page (it polls once a second; a killed node leaves the ring
#: after --down-after).
WITHIN = 45.0


def find_chromium() -> str | None:
    explicit = os.environ.get("PEER_RING_CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def require_chromium(require_component: Any) -> str:
    binary = find_chromium()
    require_component(
        "Chromium (headless browser)",
        binary is not None,
        "apt-get install chromium (or set PEER_RING_CHROMIUM to a Chrome/Chromium binary)",
    )
    assert binary is not None
    return binary


class Page:
    """One browser tab over the DevTools protocol (just Runtime.evaluate)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, params: dict[str, Any]) -> Any:
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:  # skip events until our answer
            message = await asyncio.wait_for(self._ws.receive_json(), timeout=10.0)
            if message.get("id") == ident:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> float:
        """Evaluate ``expression`` until truthy; seconds taken. Polls: the page changes on
        its own timer, driven by other processes."""
        start = time.monotonic()
        while not await self.evaluate(expression):
            assert time.monotonic() - start < WITHIN, f"page never showed {what}: " + str(
                await self.evaluate("document.body.innerText")
            )
            await asyncio.sleep(0.2)
        return time.monotonic() - start


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(require_component: Any) -> AsyncIterator[LocalCluster]:
    require_chromium(require_component)  # before starting processes a skip would waste
    require_component(
        "loopback aliases 127.0.0.2 and 127.0.0.3",
        loopback_aliases_available(HOSTS),
        "Linux routes all of 127.0.0.0/8 to lo; elsewhere add the aliases to lo0",
    )
    async with LocalCluster(
        allocate_addresses(3, hosts=HOSTS),
        serve_args=["--replication=3", "--partitions=256", "--down-after=2"],
        env={"PEER_RING_HTTP_TOKEN": TOKEN},
    ) as cluster:
        await cluster.start(ready_within=60)
        yield cluster


@pytest_asyncio.fixture(loop_scope="module")
async def page(require_component: Any, cluster: LocalCluster) -> AsyncIterator[Page]:
    binary = require_chromium(require_component)
    profile = Path(tempfile.mkdtemp(prefix="peer-ring-ui-"))
    args = [
        binary,
        "--headless=new",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
    browser = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30.0
        while not port_file.exists() or not port_file.read_text().strip():
            assert browser.returncode is None, "Chromium exited at start"
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        url = f"{cluster.nodes[0].address.url}/ui/#token={TOKEN}"
        async with aiohttp.ClientSession() as session:
            async with session.put(f"http://127.0.0.1:{port}/json/new?about:blank") as r:
                target = await r.json(content_type=None)
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tab = Page(ws)
                # Navigate over the protocol: a URL with a #fragment survives intact.
                await tab.send("Page.navigate", {"url": url})
                yield tab
    finally:
        if browser.returncode is None:
            browser.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(browser.wait(), 10.0)
            except TimeoutError:
                browser.kill()
                await browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def test_page_shows_the_cluster_and_follows_a_killed_node(
    cluster: LocalCluster, page: Page
) -> None:
    await page.wait_for("document.getElementById('member-count')?.textContent === '3'", "3 members")
    await page.wait_for(
        "document.querySelectorAll('#members tbody tr').length === 3", "3 member rows"
    )
    rows = await page.evaluate(
        "[...document.querySelectorAll('#members tbody tr')].map(r => r.dataset.member)"
    )
    assert sorted(rows) == sorted(n.address.peer for n in cluster.nodes)
    # The ring was drawn: the canvas has coloured pixels, and the legend names every member.
    await page.wait_for("document.querySelectorAll('#legend li').length === 3", "the legend")
    painted = await page.evaluate(
        "(() => { const c = document.getElementById('ring');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })()"
    )
    assert painted > 1000
    # The token reached the API (the load columns come from /admin/nodes).
    await page.wait_for(
        "document.getElementById('status').textContent === 'node ready'", "the node ready"
    )
    keys = await page.evaluate(
        "[...document.querySelectorAll('#members tbody tr')].map(r => r.cells[5].textContent)"
    )
    assert all(k.isdigit() for k in keys), keys  # load figures from every node
    assert "#token" not in await page.evaluate("location.href")

    victim = cluster.nodes[2]
    await victim.kill(signal.SIGKILL)
    shown = await page.wait_for(
        "document.getElementById('member-count')?.textContent === '2'", "2 members after the kill"
    )
    events = await page.evaluate("document.getElementById('events').innerText")
    assert f"member left the ring: {victim.address.peer}" in events
    rows = await page.evaluate("document.querySelectorAll('#members tbody tr').length")
    assert rows == 2
    # Informational: how long the page took to show the departure (--down-after=2 + polls).
    print(json.dumps({"ui_shows_departure_seconds": round(shown, 2)}))
