"""deploy/k8s/ from stores.yaml: the cluster on Kubernetes, like compose (never hand-edited)."""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from deploy import nginx
from deploy.compose import GATEWAY_PORT, SHARD_PORT
from deploy.topology import ROOT
from storeface.stores import NodeGroup, StoresFile, parse_stores

Manifest = dict[str, Any]

OUT = ROOT / "deploy" / "k8s"
IMAGE = "storeface:latest"
REDIS_IMAGE = "redis:7-alpine"
NGINX_IMAGE = "nginx:1.27-alpine"
REDIS_PORT = 6379
SENTINEL_PORT = 26379
REDIS_REPLICAS = 2  # a primary and one replica
SENTINELS = 3
QUORUM = 2  # Sentinels that must agree the primary is down
SENTINEL_SERVICE = "storeface"  # the name the Sentinels know the primary by
SENTINEL_DOWN_AFTER_MS = 5000
KEYS_SECRET = "storeface-keys"  # created by ops (README), never by this generator
STORES_CONFIGMAP = "storeface-stores"
MODELS_CLAIM = "storeface-models"  # ONNX weights for embedders other than dlib (README)
CONFIG_DIR = "/app/config"
APP_UID = 1000  # the `storeface` user of deploy/Dockerfile
REDIS_UID = 999  # the `redis` user of the redis image
SHARD_CPU = 2  # a shard replica's CPU request, and so its face-pipeline workers
GATEWAY_CPU_TARGET = 70  # % of the request at which the autoscaler adds gateways
NGINX_REPLICAS = 2
HEADER = "# Generated from config/stores.yaml by `python -m deploy.k8s`; do not edit.\n"

SHARD_RESOURCES = {
    "requests": {"cpu": str(SHARD_CPU), "memory": "2Gi"},
    "limits": {"cpu": str(2 * SHARD_CPU), "memory": "4Gi"},
}
GATEWAY_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}
NGINX_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "64Mi"},
    "limits": {"cpu": "500m", "memory": "128Mi"},
}
# Redis holds every face, embedding and visit: size its memory to the chain's faces.
REDIS_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "1Gi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}
SENTINEL_RESOURCES = {
    "requests": {"cpu": "50m", "memory": "32Mi"},
    "limits": {"cpu": "200m", "memory": "64Mi"},
}
SNAPSHOT_STORAGE = "5Gi"
REDIS_STORAGE = "10Gi"


def redis_host(i: int) -> str:
    return f"redis-{i}.redis"


def sentinel_addrs() -> list[str]:
    return [f"redis-sentinel-{i}.redis-sentinel:{SENTINEL_PORT}" for i in range(SENTINELS)]


def shard_name(node_id: str) -> str:
    """A node group's StatefulSet and Service: a DNS label, distinct per group."""
    name = "shard-" + node_id.replace("_", "-")  # stores.yaml refuses ids that differ only so
    if len(name) > 40 or name.endswith("-"):  # pods, PVCs and revision labels add suffixes
        digest = hashlib.sha256(node_id.encode()).hexdigest()[:8]
        name = f"{name[:31].rstrip('-')}-{digest}"
    return name


def _labels(component: str, instance: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "storeface", "app.kubernetes.io/component": component}
    if instance:
        labels["app.kubernetes.io/instance"] = instance
    return labels


def _meta(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "labels": {**labels, "app.kubernetes.io/part-of": "storeface"}}


def _http_probe(path: str, port: int, failures: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _exec_probe(script: str) -> dict[str, Any]:
    return {
        "exec": {"command": ["sh", "-c", script]},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }


def _tcp_probe(port: int, failures: int = 3) -> dict[str, Any]:
    return {"tcpSocket": {"port": port}, "periodSeconds": 10, "failureThreshold": failures}


def _spread(selector: dict[str, str]) -> list[dict[str, Any]]:
    """Replicas on different machines where the cluster has them."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
        }
    ]


def _pdb(name: str, selector: dict[str, str], **budget: int) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, selector),
        "spec": {**budget, "selector": {"matchLabels": selector}},
    }


def _service(name: str, selector: dict[str, str], ports: dict[str, int], **spec: Any) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, selector),
        "spec": {
            **spec,
            "selector": selector,
            "ports": [{"name": n, "port": p, "targetPort": n} for n, p in ports.items()],
        },
    }


def _app_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": APP_UID, "runAsGroup": APP_UID, "fsGroup": APP_UID}


def _common_env() -> list[dict[str, Any]]:
    return [
        {"name": "STOREFACE_STORES_FILE", "value": f"{CONFIG_DIR}/stores.yaml"},
        # the first primary, until the services follow the Sentinels below
        {"name": "STOREFACE_REDIS_URL", "value": f"redis://{redis_host(0)}:{REDIS_PORT}/0"},
        {"name": "STOREFACE_REDIS_SENTINELS", "value": ",".join(sentinel_addrs())},
        {"name": "STOREFACE_REDIS_SERVICE", "value": SENTINEL_SERVICE},
        {"name": "STOREFACE_MODELS_DIR", "value": "/models"},
    ]


def _stores_volume() -> dict[str, Any]:
    return {"name": "stores", "configMap": {"name": STORES_CONFIGMAP}}


# No subPath: a ConfigMap mounted as a directory is updated in place, and the services
# reload stores.yaml when it changes, without a restart.
STORES_MOUNT = {"name": "stores", "mountPath": CONFIG_DIR, "readOnly": True}


def _prometheus(port: int) -> dict[str, str]:
    """Counters are per process: Prometheus scrapes each pod, never through a Service."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def render_stores(stores_text: str) -> list[Manifest]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(STORES_CONFIGMAP, _labels("config")),
            "data": {"stores.yaml": stores_text},
        }
    ]


def _shard_container(g: NodeGroup, image: str) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [STORES_MOUNT, {"name": "data", "mountPath": "/data"}]
    if g.embedder != "dlib":  # dlib's weights ship inside its wheel
        mounts.append({"name": "models", "mountPath": "/models", "readOnly": True})
    return {
        "name": "shard",
        "image": image,
        "command": [
            *("python", "-m", "shard_node", "serve", "--node", g.id),
            *("--host", "0.0.0.0", "--port", str(SHARD_PORT)),
        ],
        "ports": [{"name": "http", "containerPort": SHARD_PORT}],
        "env": [
            *_common_env(),
            {"name": "STOREFACE_SNAPSHOT_DIR", "value": "/data/snapshots"},
            # the default divides the machine's cores among local replicas: not ours to share
            {"name": "STOREFACE_WORKERS", "value": str(SHARD_CPU)},
            {
                "name": "STOREFACE_REPLICA_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
        ],
        "resources": SHARD_RESOURCES,
        # loading a large store from Redis takes a while: liveness waits for the start
        "startupProbe": _http_probe("/healthz", SHARD_PORT, failures=120),
        "readinessProbe": _http_probe("/readyz", SHARD_PORT),
        "livenessProbe": _http_probe("/healthz", SHARD_PORT),
        "volumeMounts": mounts,
    }


def render_shard(g: NodeGroup, image: str) -> list[Manifest]:
    """A node group: a StatefulSet (each replica its own snapshot volume), its Service, a PDB."""
    name = shard_name(g.id)
    sel = _labels("shard", name)
    volumes: list[dict[str, Any]] = [_stores_volume()]
    if g.embedder != "dlib":
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": MODELS_CLAIM, "readOnly": True},
            }
        )
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, sel),
        "spec": {
            "serviceName": name,
            "replicas": g.replicas,
            "podManagementPolicy": "Parallel",  # replicas are peers: start them together
            "selector": {"matchLabels": sel},
            "template": {
                "metadata": {"labels": sel, "annotations": _prometheus(SHARD_PORT)},
                "spec": {
                    "securityContext": _app_security(),
                    "topologySpreadConstraints": _spread(sel),
                    "containers": [_shard_container(g, image)],
                    "volumes": volumes,
                },
            },
            "volumeClaimTemplates": [_claim(SNAPSHOT_STORAGE)],
        },
    }
    return [
        _service(name, sel, {"http": SHARD_PORT}),
        statefulset,
        _pdb(name, sel, maxUnavailable=1),
    ]


def render_gateway(cfg: StoresFile, image: str) -> list[Manifest]:
    """The gateway Deployment, its Service, autoscaler and PDB."""
    sel = _labels("gateway")
    secret_env = [
        ("STOREFACE_ADMIN_KEY", "admin-key", False),
        ("STOREFACE_CAMERA_KEYS", "camera-keys", True),
    ]
    container = {
        "name": "gateway",
        "image": image,
        "command": ["python", "-m", "gateway", "--host", "0.0.0.0", "--port", str(GATEWAY_PORT)],
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        "env": [
            *_common_env(),
            {
                "name": "STOREFACE_SHARD_PROXY",
                "value": f"http://nginx-shards:{cfg.cluster.shard_proxy_port}",
            },
            *(
                {
                    "name": env,
                    "valueFrom": {
                        "secretKeyRef": {"name": KEYS_SECRET, "key": key, "optional": optional}
                    },
                }
                for env, key, optional in secret_env
            ),
        ],
        "resources": GATEWAY_RESOURCES,
        # Readiness without Redis, as compose: during a Redis failover every gateway would
        # leave the Service at once, and cameras would get nginx's 502 instead of the
        # gateways' own 503 storage_unavailable.
        "readinessProbe": _http_probe("/healthz", GATEWAY_PORT),
        "livenessProbe": _http_probe("/healthz", GATEWAY_PORT),
        "volumeMounts": [STORES_MOUNT],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("gateway", sel),
        # no `replicas`: the autoscaler owns it, and each apply would reset it
        "spec": {
            "selector": {"matchLabels": sel},
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": sel, "annotations": _prometheus(GATEWAY_PORT)},
                "spec": {
                    "securityContext": _app_security(),
                    "topologySpreadConstraints": _spread(sel),
                    "containers": [container],
                    "volumes": [_stores_volume()],
                },
            },
        },
    }
    n = cfg.cluster.gateway_replicas
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta("gateway", sel),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"},
            "minReplicas": n,
            "maxReplicas": 4 * n,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": GATEWAY_CPU_TARGET},
                    },
                }
            ],
        },
    }
    return [
        _service("gateway", sel, {"http": GATEWAY_PORT}),
        deployment,
        hpa,
        _pdb("gateway", sel, maxUnavailable=1),
    ]


def _service_addrs(service: str, port: int, n: int) -> list[str]:
    """A Service once per replica: each nginx retry is a new connection it balances again."""
    return [f"{service}:{port}"] * max(1, n)


def render_nginx(cfg: StoresFile) -> str:
    """nginx.conf for the cluster: the front door and one upstream per node group."""
    conf = nginx.render(
        cfg,
        None,
        listen_host="",
        gateway_addrs=_service_addrs("gateway", GATEWAY_PORT, cfg.cluster.gateway_replicas),
        replica_addrs=lambda node_id: _service_addrs(
            shard_name(node_id), SHARD_PORT, len(cfg.replica_ports(node_id))
        ),
    )
    # /metrics/gateway-N would reach whichever gateway pod the Service picks: Prometheus
    # scrapes each pod instead (their annotations), and /metrics says so.
    conf = "".join(
        line
        for line in conf.splitlines(keepends=True)
        if "location = /metrics/gateway-" not in line
    )
    conf, n = re.subn(
        r"metrics are per gateway: scrape [^\"']*",
        "metrics are per process: scrape /metrics on each gateway pod",
        conf,
    )
    if n != 1:
        raise RuntimeError("deploy/nginx.py changed its /metrics answer: update deploy/k8s.py")
    return conf


def render_front(cfg: StoresFile) -> list[Manifest]:
    """nginx: the front door (a LoadBalancer) and the gateways' way to the node groups."""
    c = cfg.cluster
    conf = render_nginx(cfg)
    sel = _labels("nginx")
    container = {
        "name": "nginx",
        "image": NGINX_IMAGE,
        "ports": [
            {"name": "front", "containerPort": c.front_port},
            {"name": "shards", "containerPort": c.shard_proxy_port},
        ],
        "resources": NGINX_RESOURCES,
        "readinessProbe": _tcp_probe(c.front_port),
        "livenessProbe": _tcp_probe(c.front_port),
        "volumeMounts": [
            {
                "name": "conf",
                "mountPath": "/etc/nginx/nginx.conf",
                "subPath": "nginx.conf",
                "readOnly": True,
            }
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("nginx", sel),
        "spec": {
            "replicas": NGINX_REPLICAS,
            "selector": {"matchLabels": sel},
            "template": {
                # a changed conf (a new node group) rolls the pods: subPath mounts never update
                "metadata": {
                    "labels": sel,
                    "annotations": {
                        "storeface/nginx-conf-sha256": hashlib.sha256(conf.encode()).hexdigest()
                    },
                },
                "spec": {
                    "topologySpreadConstraints": _spread(sel),
                    "containers": [container],
                    "volumes": [{"name": "conf", "configMap": {"name": "nginx"}}],
                },
            },
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("nginx", sel),
            "data": {"nginx.conf": conf},
        },
        deployment,
        _service("front", sel, {"front": c.front_port}, type="LoadBalancer"),
        _service("nginx-shards", sel, {"shards": c.shard_proxy_port}),
        _pdb("nginx", sel, maxUnavailable=1),
    ]


REDIS_SH = f"""\
#!/bin/sh
# Start as a replica of the primary the Sentinels know; on a first start redis-0 is it.
set -eu
me="$(hostname).redis"
primary=""
for i in {" ".join(str(i) for i in range(SENTINELS))}; do
  primary="$(redis-cli -h "redis-sentinel-$i.redis-sentinel" -p {SENTINEL_PORT} --raw \\
    SENTINEL get-master-addr-by-name {SENTINEL_SERVICE} 2>/dev/null | head -n 1)" || true
  if [ -n "$primary" ]; then break; fi
done
if [ -z "$primary" ]; then
  if [ "$(hostname)" = redis-0 ]; then primary="$me"; else primary={redis_host(0)}; fi
fi
set -- redis-server --port {REDIS_PORT} --dir /data --appendonly yes --appendfsync everysec \\
  --save "" --protected-mode no --replica-announce-ip "$me"
if [ "$primary" != "$me" ]; then
  exec "$@" --replicaof "$primary" {REDIS_PORT}
fi
# A primary that comes back without its data would wipe its replica at the next sync:
# stay down instead, so that the Sentinels promote the replica.
if [ ! -e /data/appendonlydir ]; then
  for i in {" ".join(str(i) for i in range(REDIS_REPLICAS))}; do
    peer="redis-$i.redis"
    if [ "$peer" = "$me" ]; then continue; fi
    keys="$(redis-cli -h "$peer" -p {REDIS_PORT} DBSIZE 2>/dev/null || echo 0)"
    if [ "$keys" -gt 0 ] 2>/dev/null; then
      echo "no data here but $peer holds $keys keys: waiting for a failover" >&2
      exit 1
    fi
  done
fi
exec "$@"
"""

SENTINEL_SH = f"""\
#!/bin/sh
# Monitor the primary the other Sentinels know (it moves with each failover), else redis-0.
set -eu
me="$(hostname).redis-sentinel"
primary=""
for i in {" ".join(str(i) for i in range(SENTINELS))}; do
  peer="redis-sentinel-$i.redis-sentinel"
  if [ "$peer" = "$me" ]; then continue; fi
  primary="$(redis-cli -h "$peer" -p {SENTINEL_PORT} --raw \\
    SENTINEL get-master-addr-by-name {SENTINEL_SERVICE} 2>/dev/null | head -n 1)" || true
  if [ -n "$primary" ]; then break; fi
done
primary="${{primary:-{redis_host(0)}}}"
# Sentinel refuses a hostname it cannot resolve yet
until nslookup "$primary" >/dev/null 2>&1; do echo "waiting for $primary" >&2; sleep 2; done
cat > /data/sentinel.conf <<EOF
port {SENTINEL_PORT}
dir /data
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $me
sentinel monitor {SENTINEL_SERVICE} $primary {REDIS_PORT} {QUORUM}
sentinel down-after-milliseconds {SENTINEL_SERVICE} {SENTINEL_DOWN_AFTER_MS}
sentinel failover-timeout {SENTINEL_SERVICE} 60000
sentinel parallel-syncs {SENTINEL_SERVICE} 1
EOF
exec redis-server /data/sentinel.conf --sentinel
"""


def _claim(storage: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}},
    }


def _redis_statefulset(
    name: str, replicas: int, container: dict[str, Any], storage: str | None
) -> Manifest:
    """`storage`: a persistent volume per pod; None: a scratch directory."""
    sel = _labels(name)
    spec: dict[str, Any] = {
        "serviceName": name,
        "replicas": replicas,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": sel},
        "template": {
            "metadata": {"labels": sel},
            "spec": {
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": REDIS_UID,
                    "runAsGroup": REDIS_UID,
                    "fsGroup": REDIS_UID,
                },
                "topologySpreadConstraints": _spread(sel),
                "containers": [container],
                "volumes": [
                    {"name": "scripts", "configMap": {"name": "redis-scripts"}},
                    *([] if storage else [{"name": "data", "emptyDir": {}}]),
                ],
            },
        },
    }
    if storage:
        spec["volumeClaimTemplates"] = [_claim(storage)]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(name, sel),
        "spec": spec,
    }


def _redis_container(name: str, script: str, port: int, resources: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": REDIS_IMAGE,
        "command": ["sh", f"/scripts/{script}"],
        "ports": [{"name": name, "containerPort": port}],
        "resources": resources,
        "readinessProbe": _exec_probe(f'[ "$(redis-cli -p {port} ping)" = PONG ]'),
        # an open port, not PING: Redis answers LOADING while it replays a large AOF
        "livenessProbe": _tcp_probe(port, failures=6),
        "volumeMounts": [
            {"name": "scripts", "mountPath": "/scripts", "readOnly": True},
            {"name": "data", "mountPath": "/data"},
        ],
    }


def render_redis() -> list[Manifest]:
    """Redis primary + replica (append-only file on) and three Sentinels that fail over."""
    # publishNotReadyAddresses: a pod's name resolves before it is ready, which a replica
    # starting next to its primary, and Sentinel's hostnames, need.
    headless = {"clusterIP": "None", "publishNotReadyAddresses": True}
    redis = _redis_statefulset(
        "redis",
        REDIS_REPLICAS,
        _redis_container("redis", "redis.sh", REDIS_PORT, REDIS_RESOURCES),
        REDIS_STORAGE,
    )
    # a restarted Sentinel learns the state again from its peers
    sentinel = _redis_statefulset(
        "redis-sentinel",
        SENTINELS,
        _redis_container("redis-sentinel", "sentinel.sh", SENTINEL_PORT, SENTINEL_RESOURCES),
        None,
    )
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("redis-scripts", _labels("redis")),
            "data": {"redis.sh": REDIS_SH, "sentinel.sh": SENTINEL_SH},
        },
        _service("redis", _labels("redis"), {"redis": REDIS_PORT}, **headless),
        _service(
            "redis-sentinel",
            _labels("redis-sentinel"),
            {"redis-sentinel": SENTINEL_PORT},
            **headless,
        ),
        redis,
        sentinel,
        _pdb("redis", _labels("redis"), maxUnavailable=1),
        _pdb("redis-sentinel", _labels("redis-sentinel"), minAvailable=QUORUM),
    ]


def render(cfg: StoresFile, stores_text: str, image: str = IMAGE) -> dict[str, list[Manifest]]:
    """Every file of deploy/k8s/: its name and its manifests."""
    files = {
        "stores-configmap.yaml": render_stores(stores_text),
        "redis.yaml": render_redis(),
        "gateway.yaml": render_gateway(cfg, image),
        "nginx.yaml": render_front(cfg),
    }
    for g in cfg.groups():
        if not g.urls:  # replicas that run elsewhere
            files[f"{shard_name(g.id)}.yaml"] = render_shard(g, image)
    return files


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None  # config files and scripts stay readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump(docs: list[Manifest]) -> str:
    return HEADER + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, explicit_start=True)


def stale(out: Path, files: dict[str, str]) -> list[str]:
    """Files of `out` that differ from `files`, are missing, or are left from removed groups."""
    on_disk = {p.name for p in out.glob("*.yaml")}
    return sorted(
        {n for n in files if n not in on_disk or (out / n).read_text() != files[n]}
        | (on_disk - set(files))
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m deploy.k8s [stores.yaml] [--image I] [--check]`: write deploy/k8s/."""
    parser = argparse.ArgumentParser(prog="python -m deploy.k8s", description=__doc__)
    parser.add_argument("stores", nargs="?", type=Path, default=ROOT / "config" / "stores.yaml")
    parser.add_argument("--image", default=IMAGE, help="the storeface image (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="fail if the files are out of date")
    args = parser.parse_args(argv)
    text = args.stores.read_text()
    manifests = render(parse_stores(text, str(args.stores)), text, args.image)
    files = {name: dump(docs) for name, docs in manifests.items()}
    differ = stale(args.out, files)
    if args.check:
        if differ:
            print(f"out of date in {args.out}: {', '.join(differ)}; run `python -m deploy.k8s`")
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in differ:
        if name in files:
            (args.out / name).write_text(files[name])
        else:
            (args.out / name).unlink()
    print(f"wrote {args.out}: {', '.join(sorted(files))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
