"""deploy/: compose and nginx configs agree with stores.yaml (no Docker engine runs here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from deploy import compose, nginx
from deploy.topology import find_binary, plan
from storeface.stores import load_stores, parse_stores

ROOT = Path(__file__).resolve().parents[1]
CFG = load_stores(ROOT / "config" / "stores.yaml")


def test_committed_compose_is_the_one_stores_yaml_generates() -> None:
    assert (ROOT / "deploy" / "compose.yaml").read_text() == compose.dump(
        compose.render_compose(CFG)
    ), "run `python -m deploy.compose` after editing stores.yaml"
    assert (ROOT / "deploy" / "nginx" / "compose.conf").read_text() == compose.render_nginx(CFG)


def test_compose_topology_matches_stores_yaml() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = doc["services"]
    assert CFG.nodes, "the default stores.yaml shows node groups"
    for group in CFG.groups():
        names = [f"shard-{group.id}-{i}" for i in range(1, group.replicas + 1)]
        for name in names:
            svc = services[name]
            assert svc["command"][svc["command"].index("--node") + 1] == group.id
            assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
            assert "healthcheck" in svc
            assert f"{name}-data" in doc["volumes"]
    gateways = [n for n in services if n.startswith("gateway-")]
    assert len(gateways) == CFG.cluster.gateway_replicas
    for g in gateways:
        env = services[g]["environment"]
        assert env["STOREFACE_SHARD_PROXY"] == f"http://nginx:{CFG.cluster.shard_proxy_port}"
        assert env["STOREFACE_ADMIN_KEY"].startswith("${"), "secrets come from the environment"
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    assert "--appendonly" in services["redis"]["command"]
    front = CFG.cluster.front_port
    assert services["nginx"]["ports"] == [f"{front}:{front}"]
    assert set(services["nginx"]["depends_on"]) == set(services) - {"redis", "nginx"}
    # every service the nginx config names exists in compose, with the port it serves on
    conf = (ROOT / "deploy" / "nginx" / "compose.conf").read_text()
    assert not [n for n in services if n.startswith("shard-store-")], "no process per store"
    for host, port in re.findall(r"server ([a-z0-9-]+):(\d+) ", conf):
        assert host in services
        assert str(port) in services[host]["command"]
    assert (ROOT / "deploy" / "Dockerfile").exists()


def test_nginx_has_an_upstream_per_node_group_and_passes_nginx_t(tmp_path: Path) -> None:
    conf = nginx.render(CFG, tmp_path)
    for group in CFG.groups():
        block = re.search(rf"upstream node_{group.id.replace('-', '_')} \{{(.*?)\}}", conf, re.S)
        assert block, group.id
        ports = [int(p) for p in re.findall(r"server [\d.]+:(\d+)", block.group(1))]
        assert ports == CFG.replica_ports(group.id)
        assert f"location /{group.id}/" in conf
    assert len(re.findall(r"\bupstream node_", conf)) == len(CFG.nodes) < len(CFG.stores)
    assert "client_max_body_size 10m" in conf
    # metrics are per process: one path per gateway, and /metrics says so instead of mixing
    for i in range(CFG.cluster.gateway_replicas):
        port = CFG.cluster.gateway_port + i
        assert (
            f"location = /metrics/gateway-{i + 1} {{ proxy_pass http://127.0.0.1:{port}/metrics; }}"
            in conf
        )
    assert re.search(r"location = /metrics \{\s*default_type application/json;\s*return 404", conf)
    assert "non_idempotent" in conf and "rt=$request_time" in conf
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    for sub in ("client_body_temp", "proxy_temp"):
        (tmp_path / sub).mkdir()
    check = subprocess.run(
        [find_binary("nginx"), "-p", str(tmp_path), "-c", str(path), "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_adding_a_group_changes_no_other_program(tmp_path: Path) -> None:
    """supervisord restarts a program whose command or environment changed: adding a group
    must leave every other group's replicas exactly as they were."""
    one = "nodes:\n  - id: n1\n    port: 9200\nstores:\n  - id: a\n    node: n1\n"
    two = one.replace("stores:", "  - id: n2\n    port: 9300\n    replicas: 3\nstores:") + (
        "  - id: b\n    node: n2\n"
    )
    before = {p.name: p for p in plan(parse_stores(one), tmp_path / "s.yaml", tmp_path, tmp_path)}
    after = {p.name: p for p in plan(parse_stores(two), tmp_path / "s.yaml", tmp_path, tmp_path)}
    assert set(after) - set(before) == {"shard-n2-1", "shard-n2-2", "shard-n2-3"}
    for name, program in before.items():
        assert (after[name].argv, after[name].env) == (program.argv, program.env), name


def test_the_image_holds_every_package_the_services_import() -> None:
    """A package the services import but the Dockerfile leaves out fails only at start."""
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M))
    own = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    imported = set()
    for package in ("gateway", "shard_node", "deploy"):
        for path in (ROOT / package).rglob("*.py"):
            imported |= set(re.findall(r"^(?:from|import) (\w+)", path.read_text(), re.M)) & own
    assert imported >= {"storeface", "web", "gateway", "shard_node"}
    assert imported <= copied, f"the Dockerfile does not COPY {sorted(imported - copied)}"
