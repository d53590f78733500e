"""deploy/compose.yaml and its nginx config, generated from stores.yaml (never hand-edited)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from deploy import nginx
from deploy.topology import ROOT
from storeface.stores import StoresFile, load_stores

SHARD_PORT = 9000
GATEWAY_PORT = 8000


def shard_service(node_id: str, i: int) -> str:
    return f"shard-{node_id}-{i}"


def _http_check(port: int, path: str) -> dict[str, Any]:
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}')"
    return {
        "test": ["CMD", "python", "-c", probe],
        "interval": "5s",
        "timeout": "3s",
        "retries": 60,
        "start_period": "20s",
    }


def render_compose(cfg: StoresFile) -> dict[str, Any]:
    c = cfg.cluster
    image = {
        "build": {"context": "..", "dockerfile": "deploy/Dockerfile"},
        "image": "storeface:latest",
    }
    common_env = {
        "STOREFACE_STORES_FILE": "/app/config/stores.yaml",
        "STOREFACE_REDIS_URL": "redis://redis:6379/0",
        "STOREFACE_MODELS_DIR": "/models",
    }
    services: dict[str, Any] = {
        "redis": {
            "image": "redis:7-alpine",
            "command": ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec"],
            "volumes": ["redis-data:/data"],
            "healthcheck": {
                "test": ["CMD", "redis-cli", "ping"],
                "interval": "5s",
                "timeout": "3s",
                "retries": 20,
            },
            "restart": "unless-stopped",
        }
    }
    volumes: dict[str, Any] = {"redis-data": {}}
    shard_names = []
    for g in cfg.groups():
        if g.urls:  # replicas that run elsewhere
            continue
        for i in range(1, g.replicas + 1):
            name = shard_service(g.id, i)
            shard_names.append(name)
            volumes[f"{name}-data"] = {}
            services[name] = {
                **image,
                "command": [
                    "python",
                    "-m",
                    "shard_node",
                    "serve",
                    "--node",
                    g.id,
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(SHARD_PORT),
                ],
                "environment": {**common_env, "STOREFACE_SNAPSHOT_DIR": "/data/snapshots"},
                "volumes": [
                    f"{name}-data:/data",
                    "${STOREFACE_MODELS_DIR:-../../shared/models}:/models:ro",
                ],
                "depends_on": {"redis": {"condition": "service_healthy"}},
                "healthcheck": _http_check(SHARD_PORT, "/readyz"),
                "restart": "unless-stopped",
            }
    gateways = [f"gateway-{i}" for i in range(1, c.gateway_replicas + 1)]
    for name in gateways:
        services[name] = {
            **image,
            "command": [
                "python",
                "-m",
                "gateway",
                "--host",
                "0.0.0.0",
                "--port",
                str(GATEWAY_PORT),
            ],
            "environment": {
                **common_env,
                "STOREFACE_SHARD_PROXY": f"http://nginx:{c.shard_proxy_port}",
                # secrets come from the environment of whoever runs compose, never the repo
                "STOREFACE_ADMIN_KEY": "${STOREFACE_ADMIN_KEY:?set STOREFACE_ADMIN_KEY}",
                "STOREFACE_CAMERA_KEYS": "${STOREFACE_CAMERA_KEYS:-}",
            },
            "depends_on": {"redis": {"condition": "service_healthy"}},
            "healthcheck": _http_check(GATEWAY_PORT, "/healthz"),
            "restart": "unless-stopped",
        }
    services["nginx"] = {
        "image": "nginx:1.27-alpine",
        "volumes": ["./nginx/compose.conf:/etc/nginx/nginx.conf:ro"],
        "ports": [f"{c.front_port}:{c.front_port}"],
        "depends_on": {n: {"condition": "service_healthy"} for n in gateways + shard_names},
        "restart": "unless-stopped",
    }
    return {"name": "storeface", "services": services, "volumes": volumes}


def render_nginx(cfg: StoresFile) -> str:
    return nginx.render(
        cfg,
        None,
        listen_host="",
        gateway_addrs=[
            f"gateway-{i}:{GATEWAY_PORT}" for i in range(1, cfg.cluster.gateway_replicas + 1)
        ],
        replica_addrs=lambda node_id: [
            f"{shard_service(node_id, i)}:{SHARD_PORT}"
            for i in range(1, len(cfg.replica_ports(node_id)) + 1)
        ],
    )


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(doc: dict[str, Any]) -> str:
    return HEADER + yaml.dump(doc, Dumper=_NoAliases, sort_keys=False)


HEADER = "# Generated from config/stores.yaml by `python -m deploy.compose`; do not edit.\n"


def main() -> None:
    stores = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "config" / "stores.yaml"
    cfg = load_stores(stores)
    (ROOT / "deploy" / "compose.yaml").write_text(dump(render_compose(cfg)))
    (ROOT / "deploy" / "nginx" / "compose.conf").write_text(render_nginx(cfg))
    print("wrote deploy/compose.yaml and deploy/nginx/compose.conf")


if __name__ == "__main__":
    main()
