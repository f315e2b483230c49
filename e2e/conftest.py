"""Fixtures of the e2e suite: drivers, the HTTP session, fault tooling and the reports.

Run with ``pytest e2e -m e2e`` (every test here carries the ``e2e`` marker). Environment:

* ``PEER_RING_E2E_DRIVER`` — ``local`` (default: processes on this machine) or ``kind``
  (the kind workflow; also ``PEER_RING_E2E_NAMESPACE``, ``PEER_RING_E2E_DEPLOYMENT``);
* ``PEER_RING_E2E_RESULTS`` — where figures and node logs go (default ``e2e/results``);
* ``PEER_RING_E2E_RING_TRIALS`` — trials of the "five nodes start at once" scenario (20).

Missing components (root for iptables, loopback aliases, kubectl...) skip the scenarios
that need them on a laptop, and fail them when ``CI`` is set: see ``require_component`` in
the repository's root ``conftest.py``.
"""

from __future__ import annotations

import re
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

# The suite is the `e2e` package at the repository root; pytest runs with
# --import-mode=importlib, which does not put the root on sys.path by itself.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e2e.api import new_session  # noqa: E402
from e2e.drivers.base import ClusterDriver  # noqa: E402
from e2e.drivers.netfault import IptablesFaults  # noqa: E402
from e2e.report import RESULTS_DIR, ScenarioReport  # noqa: E402
from e2e.settings import DRIVER, SERVE_ARGS, DriverFactory  # noqa: E402

#: The figures of every scenario of this run, as text. They travel in the teardown report's
#: ``user_properties``, so the run's figures are printed also when pytest-xdist ran the
#: scenarios in worker processes (the worker's own memory never reaches the controller).
_FIGURES: list[str] = []
_FIGURES_PROPERTY = "e2e_figures"
_E2E_DIR = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Run the kind driver's scenarios one at a time, whatever ``-n`` says.

    The root ``pyproject.toml`` runs pytest in two pytest-xdist workers. Local clusters share
    nothing, but every kind scenario scales the same Deployment, so two at once would fight
    over it. Before xdist's own (``trylast``) configure decides to distribute.
    """
    if DRIVER == "kind" and getattr(config.option, "dist", "no") != "no":
        config.option.dist = "no"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``e2e`` (``-m e2e`` selects them, ``-m 'not e2e'``
    leaves them out of a quick run)."""
    for item in items:
        if _E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so the ``report`` fixture knows the outcome."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the figures the ``report`` fixture attached (in this process or a worker)."""
    if report.when == "teardown":
        _FIGURES.extend(v for k, v in report.user_properties if k == _FIGURES_PROPERTY)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print every scenario's figures at the end of the run (CI logs keep them)."""
    if not _FIGURES:
        return
    terminalreporter.section("e2e figures")
    for text in _FIGURES:
        terminalreporter.write_line(text)
    terminalreporter.write_line(f"(JSON and summary.md in {RESULTS_DIR})")


# -- reports ----------------------------------------------------------------------------------


def _scenario_id(node: pytest.Item) -> str:
    name = re.sub(r"^test_", "", node.name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[ScenarioReport]:
    """The scenario's figures; written to ``e2e/results`` when the test ends, pass or fail."""
    # The title is the docstring's first paragraph, on one line.
    doc = (request.function.__doc__ or "").strip().split("\n\n", 1)[0]
    title = " ".join(doc.split()) or request.node.name
    scenario = ScenarioReport(_scenario_id(request.node), title)
    yield scenario
    setup = getattr(request.node, "rep_setup", None)
    call = getattr(request.node, "rep_call", None)
    if call is None or call.skipped or (setup is not None and setup.skipped):
        return  # nothing ran (skipped, or a fixture failed): keep the previous figures
    scenario.passed = call.passed
    if call is not None and call.failed and call.longrepr is not None:
        # The first line of the failure, so the summary says *why* it failed.
        message = str(getattr(call.longrepr, "reprcrash", None) or "")
        first = message.splitlines()[0] if message else "see the test output"
        scenario.note(f"failed: {first}"[:400])
    scenario.write()
    request.node.user_properties.append((_FIGURES_PROPERTY, scenario.text()))


# -- components ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def run_id() -> str:
    """Unique per pytest run: prefixes keys, so reruns against one cluster never collide."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP client of the workload and the checker."""
    async with new_session() as s:
        yield s


@pytest.fixture
async def make_driver(
    request: pytest.FixtureRequest, require_component: Any
) -> AsyncIterator[DriverFactory]:
    """A factory of cluster drivers of the selected kind (``PEER_RING_E2E_DRIVER``).

    ``await make_driver(capacity=5, partitions=True)``. ``partitions`` asks for network
    partitions: locally that needs root and a working iptables (skipped without, failed in
    CI). Every driver it made is closed at the end of the test (nodes killed), and every
    iptables rule and chain removed, also when the test fails.
    """
    drivers: list[ClusterDriver] = []
    fault_sets: list[IptablesFaults] = []

    async def make(
        *, capacity: int = 5, partitions: bool = False, serve_args: Sequence[str] = ()
    ) -> ClusterDriver:
        driver: ClusterDriver
        faults: IptablesFaults | None = None
        if DRIVER == "local" and partitions:
            binary, why = await IptablesFaults.probe()
            require_component("iptables (as root)", binary is not None, why)
            assert binary is not None
            faults = IptablesFaults(binary)
            fault_sets.append(faults)  # before open(): close() undoes a half-open chain
            await faults.open()
        if DRIVER == "local":
            from e2e.drivers.local import LocalDriver, random_hosts
            from peer_ring.kv._local_cluster import loopback_aliases_available

            hosts = random_hosts(capacity)
            require_component(
                "loopback aliases (127.x.y.z)",
                loopback_aliases_available(hosts),
                "the local driver needs 127.0.0.0/8 bound to lo (Linux has it)",
            )
            log_dir = RESULTS_DIR / "logs" / _scenario_id(request.node)
            shutil.rmtree(log_dir, ignore_errors=True)
            driver = LocalDriver(
                log_dir,
                capacity=capacity,
                serve_args=(*SERVE_ARGS, *serve_args),
                faults=faults,
                hosts=hosts,
            )
        elif DRIVER == "kind":
            from e2e.drivers.kind import KindDriver

            require_component(
                "kubectl", shutil.which("kubectl") is not None, "the kind driver runs kubectl"
            )
            driver = KindDriver.from_env(capacity=capacity)
        else:
            raise pytest.UsageError(f"PEER_RING_E2E_DRIVER={DRIVER!r}: expected local or kind")
        drivers.append(driver)
        return driver

    try:
        yield make
    finally:
        try:
            for driver in reversed(drivers):
                await driver.close()
        finally:
            for faults in fault_sets:
                await faults.close()
