"""A real Kubernetes control plane for the discovery tests: etcd + kube-apiserver on loopback.

Test tier 4 (real external components): the discovery is tested against a real API
server, never a fake.
The ``kube`` fixture (session scope) starts, on free loopback ports and in a temporary
directory:

* etcd (``~/.cache/peer-ring/bin/etcd``, built by ``tools/k8s-test-env``);
* kube-apiserver with self-signed serving certificates made with ``cryptography``, an
  admin identity by client certificate (group ``system:masters``), service-account
  signing keys (so the TokenRequest API issues real ServiceAccount tokens) and
  ``--authorization-mode=RBAC``;

waits for ``/readyz`` and yields a :class:`Cluster` (admin kubeconfig and controls:
restart the API server, compact etcd). There is no kubelet and no controller manager: the
tests write Services, EndpointSlices and pod statuses themselves.

With ``PEER_RING_K8S_USE_KUBECONFIG=1`` and ``KUBECONFIG`` naming an existing file (a kind
cluster in the e2e workflow) that cluster is used instead, and the tests that must restart
the API server or compact etcd skip. The opt-in is explicit: the tests create namespaces,
and an exported ``KUBECONFIG`` alone (a developer's real cluster) is ignored.
When the binaries are missing, the tests skip with the command to run, or fail in CI.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from peer_ring.core import Member

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("PEER_RING_K8S_BIN", Path.home() / ".cache/peer-ring/bin"))
SERVICE = "peer-ring"
PEER_PORT = 7101
#: Upper bound for any wait on the API server or on discovery (a shared 2-core machine).
WAIT = 60.0


# --------------------------------------------------------------------------------------
# certificates
# --------------------------------------------------------------------------------------


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: x509.Name,
    public_key: Any,
    issuer: x509.Name,
    signing_key: Any,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    else:
        usage = (
            x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


@dataclass
class Pki:
    """Files of the test PKI."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a serving cert for 127.0.0.1/localhost, an admin client cert, SA keys."""
    directory.mkdir(parents=True, exist_ok=True)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("peer-ring-test-ca")
    ca = _cert(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving = _cert(
        name("kube-apiserver"),
        serving_key.public_key(),
        ca_name,
        ca_key,
        server=True,
        sans=[
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
        ],
    )
    admin_key = ec.generate_private_key(ec.SECP256R1())
    # O=system:masters: the RBAC superuser group, bound to cluster-admin at bootstrap.
    admin = _cert(
        name("peer-ring-admin", "system:masters"), admin_key.public_key(), ca_name, ca_key
    )
    # RSA for service-account tokens: RS256 is what every Kubernetes version accepts.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki = Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "serving.crt",
        serving_key=directory / "serving.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.serving_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    pki.serving_key.write_bytes(_pem_key(serving_key))
    pki.admin_cert.write_bytes(admin.public_bytes(serialization.Encoding.PEM))
    pki.admin_key.write_bytes(_pem_key(admin_key))
    pki.sa_key.write_bytes(_pem_key(sa_key))
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca_cert: Path,
    *,
    token: str | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> Path:
    """A kubeconfig with one cluster, one user (token or client certificate), one context."""
    user: dict[str, str] = {}
    if token is not None:
        user["token"] = token
    if client_cert is not None and client_key is not None:
        user["client-certificate-data"] = _b64(client_cert)
        user["client-key-data"] = _b64(client_key)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
            }
        ],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    return path


# --------------------------------------------------------------------------------------
# the control plane
# --------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _poll(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None,
    log: Path | None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError):
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s:\n{tail}")


@dataclass
class Cluster:
    """A Kubernetes API server the tests can use.

    Attributes:
        kubeconfig: an admin kubeconfig.
        server: the API server URL.
        ca_cert: the CA that signed the serving certificate.
        managed: True when this fixture started the control plane (so it can restart
            the API server and compact etcd); False for an external cluster.
    """

    kubeconfig: Path
    server: str
    ca_cert: Path
    workdir: Path
    managed: bool
    kubectl_bin: str | None
    _control: ControlPlane | None = None

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster as admin."""
        if self.kubectl_bin is None:
            pytest.fail("kubectl is not available (tools/k8s-test-env builds it)")
        return subprocess.run(
            [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    @property
    def control(self) -> ControlPlane:
        """The control plane, for tests that restart or compact; skips on external clusters."""
        if self._control is None:
            pytest.skip("needs a control plane started by the fixture (not an external KUBECONFIG)")
        return self._control


class ControlPlane:
    """etcd and kube-apiserver processes on loopback."""

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.pki = make_pki(workdir / "pki")
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self.server = f"https://127.0.0.1:{self.port}"
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self.apiserver_starts = 0

    # -- etcd --------------------------------------------------------------------------

    def start_etcd(self) -> None:
        etcd = str(self.bin_dir / "etcd")
        help_text = subprocess.run([etcd, "--help"], capture_output=True, text=True).stdout
        args = [
            etcd,
            "--name=test",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.etcd_peer_port}",
            f"--initial-cluster=test=http://127.0.0.1:{self.etcd_peer_port}",
            "--log-level=warn",
        ]
        if "--unsafe-no-fsync" in help_text:
            # Throw-away data on a disk shared by several engineers: skip fsync.
            args.append("--unsafe-no-fsync")
        log = self.workdir / "etcd.log"
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.etcd = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                return bool(json.load(r).get("health") == "true")

        _poll(healthy, WAIT, "etcd", self.etcd, log)

    def etcd_call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """Call etcd's JSON gateway (``/v3/...``)."""
        request = urllib.request.Request(
            f"{self.etcd_url}/v3/{method}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            result: dict[str, Any] = json.load(r)
            return result

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision; returns that revision."""
        key = base64.b64encode(b"/registry").decode()
        revision = int(self.etcd_call("kv/range", {"key": key, "limit": 1})["header"]["revision"])
        self.etcd_call("kv/compaction", {"revision": revision, "physical": True})
        return revision

    def etcd_revision_compacted(self, revision: int) -> bool:
        """Whether etcd refuses to read at ``revision`` because it was compacted."""
        key = base64.b64encode(b"/registry").decode()
        try:
            self.etcd_call("kv/range", {"key": key, "limit": 1, "revision": revision})
        except urllib.error.HTTPError as exc:
            return "compacted" in exc.read().decode(errors="replace")
        return False

    # -- kube-apiserver ----------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 (every post-start hook done, RBAC bootstrapped)."""
        try:
            with urllib.request.urlopen(
                f"{self.server}/readyz", timeout=5, context=self._ssl_context()
            ) as r:
                return bool(r.status == 200)
        except urllib.error.HTTPError:
            return False

    def start_apiserver(self) -> None:
        """Start kube-apiserver (again, on the same port) and wait until it is ready."""
        pki = self.pki
        issuer = "https://kubernetes.default.svc.cluster.local"
        args = [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={issuer}",
            f"--api-audiences={issuer}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            # No kubelet or real network: the endpoint of the `kubernetes` Service would
            # be a loopback address, which the API server itself refuses to publish.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ]
        log = self.workdir / "kube-apiserver.log"
        with log.open("ab") as out:
            out.write(f"\n---- start #{self.apiserver_starts + 1} ----\n".encode())
            out.flush()
            self.apiserver = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.apiserver_starts += 1
        _poll(self.ready, 180.0, "kube-apiserver", self.apiserver, log)

    def stop_apiserver(self, *, kill: bool = False) -> None:
        """Stop kube-apiserver: SIGTERM (graceful) or SIGKILL (a crash)."""
        proc, self.apiserver = self.apiserver, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart_apiserver(self, *, kill: bool = False) -> None:
        """Stop, then start the API server on the same port."""
        self.stop_apiserver(kill=kill)
        self.start_apiserver()

    def close(self) -> None:
        self.stop_apiserver()
        proc, self.etcd = self.etcd, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _kubectl_binary() -> str | None:
    built = BIN_DIR / "kubectl"
    if built.exists():
        return str(built)
    return shutil.which("kubectl")


#: Opt-in to run the k8s tests against the ``KUBECONFIG`` cluster (they create namespaces).
USE_KUBECONFIG = "PEER_RING_K8S_USE_KUBECONFIG"


@pytest.fixture(scope="session")
def kube(require_component: Callable[..., None]) -> Iterator[Cluster]:
    """A Kubernetes API server: one started here, or the ``KUBECONFIG`` cluster when
    ``PEER_RING_K8S_USE_KUBECONFIG=1`` opts in (the tests write to it)."""
    external = os.environ.get("KUBECONFIG", "")
    opted_in = os.environ.get(USE_KUBECONFIG, "") == "1"
    if opted_in and not (external and Path(external.split(os.pathsep)[0]).is_file()):
        pytest.fail(f"{USE_KUBECONFIG}=1 but KUBECONFIG names no file: {external!r}")
    if opted_in:
        path = Path(external.split(os.pathsep)[0])
        config = yaml.safe_load(path.read_text())
        cluster = config["clusters"][0]["cluster"]
        ca = Path(tempfile.mkdtemp(prefix="peer-ring-k8s-")) / "ca.crt"
        if "certificate-authority-data" in cluster:
            ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        yield Cluster(
            kubeconfig=path,
            server=cluster["server"],
            ca_cert=ca,
            workdir=ca.parent,
            managed=False,
            kubectl_bin=_kubectl_binary(),
        )
        return

    missing = [b for b in ("etcd", "kube-apiserver", "kubectl") if not (BIN_DIR / b).exists()]
    require_component(
        "kube-apiserver, etcd and kubectl",
        not missing,
        f"{', '.join(missing)} not found in {BIN_DIR}; build them with tools/k8s-test-env "
        f"(or use the KUBECONFIG cluster with {USE_KUBECONFIG}=1)",
    )
    workdir = Path(tempfile.mkdtemp(prefix="peer-ring-k8s-"))
    control = ControlPlane(BIN_DIR, workdir)
    try:
        control.start_etcd()
        control.start_apiserver()
        kubeconfig = write_kubeconfig(
            workdir / "admin.kubeconfig",
            control.server,
            control.pki.ca_cert,
            client_cert=control.pki.admin_cert,
            client_key=control.pki.admin_key,
        )
        yield Cluster(
            kubeconfig=kubeconfig,
            server=control.server,
            ca_cert=control.pki.ca_cert,
            workdir=workdir,
            managed=True,
            kubectl_bin=str(BIN_DIR / "kubectl"),
            _control=control,
        )
    finally:
        control.close()
        if not os.environ.get("PEER_RING_KEEP_K8S_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# per-test helpers
# --------------------------------------------------------------------------------------


def endpoint(
    ip: str,
    *,
    ready: bool | None = True,
    terminating: bool | None = False,
    zone: str | None = None,
    pod: str | None = None,
) -> dict[str, Any]:
    """One EndpointSlice endpoint, with its conditions as the controller would write them."""
    conditions: dict[str, bool] = {}
    if ready is not None:
        conditions["ready"] = ready
        conditions["serving"] = ready
    if terminating is not None:
        conditions["terminating"] = terminating
    result: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if zone:
        result["zone"] = zone
    if pod:
        result["targetRef"] = {"kind": "Pod", "name": pod}
    return result


def addresses(members: frozenset[Member]) -> set[str]:
    """The addresses of a member set."""
    return {m.address for m in members}


@dataclass
class Recorder:
    """Consumes ``discovery.watch()`` in the background, keeping every snapshot."""

    snapshots: list[frozenset[Member]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def _run(self, discovery: Any) -> None:
        async for snapshot in discovery.watch():
            self.snapshots.append(snapshot)
            self.changed.set()

    def start(self, discovery: Any) -> Recorder:
        self.task = asyncio.create_task(self._run(discovery))
        return self

    async def wait_for(self, expected: set[str], within: float = WAIT) -> frozenset[Member]:
        """Wait until the latest snapshot's addresses equal ``expected``."""
        async with asyncio.timeout(within):
            while not (self.snapshots and addresses(self.snapshots[-1]) == expected):
                self.changed.clear()
                await self.changed.wait()
        return self.snapshots[-1]


async def wait_until(check: Callable[[], bool], within: float = WAIT) -> None:
    """Poll ``check`` until it is true; fails the test (TimeoutError) after ``within`` seconds.

    For conditions on counters inside discovery (``stats``), which signal no event.
    """
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling a counter that has no event
            await asyncio.sleep(0.05)


class Env:
    """One test's namespace on the cluster, admin API access and discovery factory.

    Tests reach the module's helpers through it (``env.endpoint(...)``), since test
    modules cannot import a conftest.
    """

    endpoint = staticmethod(endpoint)
    addresses = staticmethod(addresses)
    wait_until = staticmethod(wait_until)
    free_port = staticmethod(free_port)
    write_kubeconfig = staticmethod(write_kubeconfig)
    repo = REPO

    def __init__(self, cluster: Cluster, client: Any, namespace: str) -> None:
        self.cluster = cluster
        self.client = client
        self.namespace = namespace
        self._discoveries: list[Any] = []
        self._recorders: list[Recorder] = []

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> Any:
        """An admin API request; returns the decoded JSON (raises on HTTP errors)."""
        from kubernetes_asyncio.client import ApiException

        response = await self.client.call_api(
            path,
            method,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
        )
        data = await response.read()
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=data.decode(errors="replace"))
        return json.loads(data) if data else None

    def path(self, resource: str, name: str = "") -> str:
        group = {
            "endpointslices": "/apis/discovery.k8s.io/v1",
            "roles": "/apis/rbac.authorization.k8s.io/v1",
            "rolebindings": "/apis/rbac.authorization.k8s.io/v1",
        }.get(resource, "/api/v1")
        base = f"{group}/namespaces/{self.namespace}/{resource}"
        return f"{base}/{name}" if name else base

    async def create_service(self, name: str = SERVICE) -> None:
        # No selector: the tests own the EndpointSlices. (On a real cluster, a selector
        # would also make the EndpointSlice controller write slices of its own.)
        await self.request(
            "POST",
            self.path("services"),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": True,
                    "ports": [{"name": "peer", "port": PEER_PORT}],
                },
            },
        )

    async def put_slice(
        self,
        name: str,
        endpoints: list[dict[str, Any]],
        *,
        service: str = SERVICE,
        address_type: str = "IPv4",
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create or replace an EndpointSlice of ``service``."""
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/service-name": service, **(labels or {})},
            },
            "addressType": address_type,
            "endpoints": endpoints,
            "ports": [{"name": "peer", "port": PEER_PORT, "protocol": "TCP"}],
        }
        try:
            current = await self.request("GET", self.path("endpointslices", name))
        except Exception:
            return dict(await self.request("POST", self.path("endpointslices"), body))
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]  # type: ignore[index]
        return dict(await self.request("PUT", self.path("endpointslices", name), body))

    async def delete(self, resource: str, name: str) -> None:
        await self.request("DELETE", self.path(resource, name))

    async def service_account_token(self, name: str) -> str:
        """A real ServiceAccount token from the TokenRequest API."""
        result = await self.request(
            "POST",
            self.path("serviceaccounts", f"{name}/token"),
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            },
        )
        return str(result["status"]["token"])

    def discovery(self, **options: Any) -> Any:
        """A KubernetesDiscovery on this namespace, admin unless told; stopped at teardown."""
        from peer_ring.discovery.k8s import Backoff, KubernetesDiscovery

        options.setdefault("namespace", self.namespace)
        options.setdefault("service", SERVICE)
        options.setdefault("port", PEER_PORT)
        options.setdefault("pod_ip", "10.1.0.1")
        if "api_client" not in options and not options.get("in_cluster"):
            options.setdefault("kubeconfig", self.cluster.kubeconfig)
        options.setdefault("backoff", Backoff(initial=0.1, maximum=1.0))
        options.setdefault("startup_timeout", 30.0)
        discovery = KubernetesDiscovery(**options)
        self._discoveries.append(discovery)
        return discovery

    def track(self, discovery: Any) -> Any:
        """Stop ``discovery`` at teardown."""
        self._discoveries.append(discovery)
        return discovery

    async def create_namespace(self, name: str) -> str:
        await self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        return name

    def record(self, discovery: Any) -> Recorder:
        recorder = Recorder().start(discovery)
        self._recorders.append(recorder)
        return recorder

    async def close(self) -> None:
        for discovery in self._discoveries:
            await discovery.stop()
        for recorder in self._recorders:
            if recorder.task is not None:
                # watch() ends after stop(); a recorder must have finished by itself.
                await asyncio.wait_for(recorder.task, timeout=10)


@pytest.fixture
async def env(kube: Cluster) -> AsyncIterator[Env]:
    """A fresh namespace with a headless Service, and admin access to the cluster."""
    from kubernetes_asyncio.client import ApiClient, Configuration
    from kubernetes_asyncio.config import load_kube_config

    configuration = Configuration()
    await load_kube_config(
        config_file=str(kube.kubeconfig), client_configuration=configuration, persist_config=False
    )
    async with ApiClient(configuration=configuration) as client:
        namespace = f"t-{uuid.uuid4().hex[:10]}"
        test_env = Env(kube, client, namespace)
        await test_env.create_namespace(namespace)
        await test_env.create_service()
        try:
            yield test_env
        finally:
            await test_env.close()
            with contextlib.suppress(Exception):
                await test_env.request("DELETE", f"/api/v1/namespaces/{namespace}")


class TcpProxy:
    """A loopback TCP proxy that a test can cut: a network fault between discovery and API server.

    ``block()`` resets every open connection and resets new ones until ``heal()``, as a
    partition (or an API server behind a load balancer going away) would.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.blocked = False
        self.port = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._connections.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(dst)
            dst.transport.abort()

    def block(self) -> None:
        self.blocked = True
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()

    def heal(self) -> None:
        self.blocked = False

    async def close(self) -> None:
        self.block()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def proxy(kube: Cluster) -> AsyncIterator[TcpProxy]:
    """A cuttable TCP proxy in front of the API server."""
    url = kube.server.removeprefix("https://")
    host, _, port = url.rpartition(":")
    tcp_proxy = await TcpProxy(host, int(port)).start()
    try:
        yield tcp_proxy
    finally:
        await tcp_proxy.close()


@pytest.fixture
def proxied_kubeconfig(kube: Cluster, proxy: TcpProxy, tmp_path: Path) -> Path:
    """The admin kubeconfig, pointed at the proxy."""
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = tmp_path / "proxied.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path
