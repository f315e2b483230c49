# The peer-ring key-value node (`peer-ring-kv serve`), used as a sidecar by deploy/ and by
# the kind e2e workflow (.github/workflows/e2e-kind.yml):
#   docker build -t peer-ring-kv:dev .
#   docker run --rm -e PEER_RING_PEERS=... peer-ring-kv:dev serve
# Where no registry answers, tools/docker-test-env builds local stand-ins of the base image
# (same name) and dockerd has no bridge: `docker build --network host ...` (deploy/README.md).

# --- build: wheels of the workspace packages ------------------------------------------------
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir "hatchling>=1.21"
COPY packages/ packages/
# --no-deps: only our own packages become wheels here; their third-party dependencies are
# resolved from PyPI in the runtime stage, against these exact wheels.
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation -w /wheels \
      packages/peer-ring-core \
      packages/peer-ring-discovery-static \
      packages/peer-ring-discovery-k8s \
      packages/peer-ring-discovery-etcd \
      packages/peer-ring-discovery-zookeeper \
      packages/peer-ring-discovery-gossip \
      packages/peer-ring-kv-store

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim
RUN groupadd --gid 10001 peer-ring \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin peer-ring
COPY --from=build /wheels /wheels
# Every discovery ships in the image (`serve --discovery static|kubernetes|etcd|zookeeper|gossip`);
# the kv store's `serve` extra (aiohttp, prometheus-client) is what the command needs.
RUN pip install --no-cache-dir /wheels/*.whl \
 && pip install --no-cache-dir "$(ls /wheels/peer_ring_kv_store-*.whl)[serve]" \
 && rm -rf /wheels
ENV PYTHONUNBUFFERED=1
USER 10001:10001
# 7101: peer gRPC (PEER_RING_PEER_PORT); 8080: HTTP API (PEER_RING_HTTP_ADDRESS).
EXPOSE 7101 8080
# Exec form, no shell or init in between: the server is PID 1 and receives `docker stop`'s /
# Kubernetes' SIGTERM itself, which starts its graceful leave (partitions handed off, exit 0).
# It starts no child processes, so it has no zombies to reap.
ENTRYPOINT ["peer-ring-kv"]
CMD ["serve"]
