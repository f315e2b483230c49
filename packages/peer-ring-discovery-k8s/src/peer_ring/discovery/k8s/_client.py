"""Building a ``kubernetes_asyncio`` API client: in-cluster service account or kubeconfig."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException, load_kube_config
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from peer_ring.discovery.k8s._errors import KubernetesDiscoveryError

#: Where the kubelet mounts a pod's service-account token, CA and namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def running_in_cluster(
    environ: Mapping[str, str], service_account_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR
) -> bool:
    """Whether this process runs in a pod with a service account mounted."""
    return (
        bool(environ.get("KUBERNETES_SERVICE_HOST"))
        and (Path(service_account_dir) / "token").is_file()
    )


def _kubeconfig_path(kubeconfig: str | os.PathLike[str] | None, env: Mapping[str, str]) -> str:
    path = kubeconfig or env.get("KUBECONFIG") or "~/.kube/config"
    return os.path.expanduser(os.fspath(path))


async def create_api_client(
    *,
    in_cluster: bool,
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
    service_account_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
) -> ApiClient:
    """A new API client; the caller closes it.

    Args:
        in_cluster: use the pod's service account (``KUBERNETES_SERVICE_HOST``/``PORT``
            and the token and CA under ``service_account_dir``). The token file is
            re-read every minute, so the kubelet's rotation of bound tokens (about hourly)
            never makes a long-running watch fail with 401.
        kubeconfig: kubeconfig path(s) (``:``-separated like ``KUBECONFIG``) when not in
            cluster; default ``$KUBECONFIG`` or ``~/.kube/config``.
        context: kubeconfig context (default: its current context).
        environ: environment to read (default ``os.environ``).
        service_account_dir: where the service-account files are mounted.

    Raises:
        KubernetesDiscoveryError: the configuration is missing or invalid.
    """
    env = dict(os.environ if environ is None else environ)
    configuration = Configuration()
    try:
        if in_cluster:
            sa_dir = Path(service_account_dir)
            InClusterConfigLoader(
                token_filename=str(sa_dir / "token"),
                cert_filename=str(sa_dir / "ca.crt"),
                try_refresh_token=True,
                environ=env,
            ).load_and_set(configuration)
        else:
            # persist_config=False: never rewrite the user's kubeconfig file.
            await load_kube_config(
                config_file=_kubeconfig_path(kubeconfig, env),
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (ConfigException, OSError) as exc:
        where = "in-cluster service account" if in_cluster else "kubeconfig"
        raise KubernetesDiscoveryError(f"cannot load the {where} configuration: {exc}") from exc
    return ApiClient(configuration=configuration)
