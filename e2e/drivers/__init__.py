"""Cluster drivers: one interface (:mod:`e2e.drivers.base`), one implementation per platform.

* :mod:`e2e.drivers.local` — ``peer-ring-kv serve`` processes on 127.0.0.x (this machine);
* :mod:`e2e.drivers.kind` — the Deployment of ``deploy/`` on a kind cluster (CI workflow
  ``.github/workflows/e2e-kind.yml``).
"""
