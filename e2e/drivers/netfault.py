"""Network partitions between local node processes, with iptables.

How one node is cut off on loopback
-----------------------------------
Nodes listen on distinct loopback addresses (127.a.b.1, 127.a.b.2...) with one shared peer
port, like pods. Matching on the node's address alone is not enough: Linux gives every
*outgoing* connection to a 127.x address the source address 127.0.0.1, so the packets a
node sends to its peers do not carry its address. Each node therefore runs with its own
group id (root only, see ``LocalCluster(group_base=...)``), and the rules are:

* ``-m owner --gid-owner G -p tcp --dport PORT`` — whatever the node sends to a peer port
  (its requests, probes and transfers to every other node);
* ``-d ADDR -p tcp --dport PORT`` — whatever anyone sends to the node's peer listener;
* ``-s ADDR -p tcp --sport PORT`` — whatever its listener sends back (SYN-ACKs and RSTs are
  sent by the kernel without an owning socket, so the owner match alone would miss them).

All of them ``DROP`` (not ``REJECT``): a partition looks like silence, and timeouts are what
the failure detector must cope with. Loopback packets cross the OUTPUT chain first, and the
owner match only works there, so one hook in OUTPUT covers both directions. The node's HTTP
port is left alone: a client next to the node can still use it.

Cleanup
-------
Every rule lives in one chain, ``PEER_RING_E2E_<pid>``, jumped to from OUTPUT: closing
removes the jump, flushes and deletes the chain. A chain left by a run that died (its pid
no longer alive) is removed by the next :meth:`IptablesFaults.open`. ``iptables -w`` waits
for the xtables lock instead of failing when another program holds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from dataclasses import dataclass

logger = logging.getLogger(__name__)

CHAIN_PREFIX = "PEER_RING_E2E_"
_CHAIN_RE = re.compile(rf"^-N ({CHAIN_PREFIX}(\d+))$", re.MULTILINE)
_TIMEOUT = 30.0


class IptablesError(RuntimeError):
    """An iptables command failed; the message has the command and its output."""


@dataclass(frozen=True, slots=True)
class Isolation:
    """The rules that cut one node off (see the module docs)."""

    host: str
    port: int
    gid: int

    def rules(self) -> list[list[str]]:
        """The rule specifications, without the chain."""
        port = str(self.port)
        return [
            ["-m", "owner", "--gid-owner", str(self.gid), "-p", "tcp", "--dport", port],
            ["-d", self.host, "-p", "tcp", "--dport", port],
            ["-s", self.host, "-p", "tcp", "--sport", port],
        ]


async def _run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), _TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise IptablesError(f"{' '.join(argv)}: no answer within {_TIMEOUT:g}s") from None
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise IptablesError(f"{' '.join(argv)} failed ({process.returncode}): {text.strip()}")
    return text


class IptablesFaults:
    """Partitions of local nodes with iptables rules in a chain of this process's own.

    Args:
        binary: ``iptables`` (nf_tables on current Debian) or ``iptables-legacy``.
    """

    def __init__(self, binary: str = "iptables") -> None:
        self.binary = binary
        self.chain = f"{CHAIN_PREFIX}{os.getpid()}"
        self._open = False
        self._isolated: dict[str, Isolation] = {}

    @staticmethod
    async def probe() -> tuple[str | None, str]:
        """Find a working iptables: ``(binary, "")`` or ``(None, why not)``.

        Working means: root, the binary exists, and a chain can be created and deleted.
        """
        if os.geteuid() != 0:
            return None, "iptables rules need root (run the suite as root, as .ci/run does)"
        reasons: list[str] = []
        for binary in ("iptables", "iptables-legacy"):
            if shutil.which(binary) is None:
                reasons.append(f"{binary}: not installed")
                continue
            chain = f"{CHAIN_PREFIX}{os.getpid()}P"
            try:
                await _run(binary, "-w", "-N", chain)
                await _run(binary, "-w", "-X", chain)
            except (IptablesError, OSError) as exc:
                reasons.append(f"{binary}: {exc}")
                continue
            return binary, ""
        return None, "; ".join(reasons) + " (apt-get install iptables; .ci/run installs it)"

    async def open(self) -> None:
        """Remove chains left by dead runs, create this run's chain, hook it into OUTPUT."""
        await self._remove_stale()
        await _run(self.binary, "-w", "-N", self.chain)
        try:
            await _run(self.binary, "-w", "-I", "OUTPUT", "1", "-j", self.chain)
        except IptablesError:
            await _run(self.binary, "-w", "-X", self.chain)
            raise
        self._open = True

    async def isolate(self, key: str, isolation: Isolation) -> None:
        """Cut a node off (``key`` names it for :meth:`heal`)."""
        if not self._open:
            raise IptablesError("IptablesFaults.open() was not called")
        if key in self._isolated:
            return
        self._isolated[key] = isolation  # before the rules: close() removes partial ones too
        for rule in isolation.rules():
            await _run(self.binary, "-w", "-A", self.chain, *rule, "-j", "DROP")
        logger.info(
            "partitioned %s (%s:%d, gid %d)", key, isolation.host, isolation.port, isolation.gid
        )

    async def heal(self, key: str) -> None:
        """Remove the rules of node ``key`` (no-op when it is not isolated)."""
        isolation = self._isolated.pop(key, None)
        if isolation is None:
            return
        for rule in isolation.rules():
            try:
                await _run(self.binary, "-w", "-D", self.chain, *rule, "-j", "DROP")
            except IptablesError as exc:  # a rule that never made it in
                logger.debug("heal %s: %s", key, exc)
        logger.info("healed %s", key)

    @property
    def isolated(self) -> frozenset[str]:
        """Keys of the nodes currently cut off."""
        return frozenset(self._isolated)

    async def rules_text(self) -> str:
        """``iptables -S`` of this run's chain (for reports and tests)."""
        return await _run(self.binary, "-w", "-S", self.chain)

    async def close(self) -> None:
        """Remove the hook and the chain with every rule in it; idempotent."""
        self._isolated.clear()
        if not self._open:
            return
        self._open = False
        await self._drop_chain(self.chain)

    async def _drop_chain(self, chain: str) -> None:
        # The jump may have been inserted more than once (it is not, but a manual retry
        # could): delete until iptables says there is none left, bounded.
        for _ in range(10):
            try:
                await _run(self.binary, "-w", "-D", "OUTPUT", "-j", chain)
            except IptablesError:
                break
        await _run(self.binary, "-w", "-F", chain)
        await _run(self.binary, "-w", "-X", chain)

    async def _remove_stale(self) -> None:
        listing = await _run(self.binary, "-w", "-S")
        for match in _CHAIN_RE.finditer(listing):
            chain, pid = match.group(1), int(match.group(2))
            if pid == os.getpid() or _alive(pid):
                continue
            logger.warning("removing iptables chain %s left by a dead run", chain)
            try:
                await self._drop_chain(chain)
            except IptablesError as exc:
                logger.warning("could not remove %s: %s", chain, exc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
