"""deploy/: compose and nginx configs agree with stores.yaml (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml

from deploy import compose, nginx
from deploy.topology import find_binary, plan
from storeface.stores import load_stores, parse_stores
from tools.servers import free_port, wait_until

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


def _http(port: int, raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send raw bytes to 127.0.0.1:port; the status, headers and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_nginx_answers_its_own_errors_in_the_api_error_model(tmp_path: Path) -> None:
    """A client parses one error format: nginx's own 4xx/5xx are the API's JSON, with Allow
    on a 405, and a gateway that is down is a JSON 502."""
    taken: set[int] = set()
    front, proxy, gateway = (free_port(taken=taken) for _ in range(3))  # gateway: nobody
    cfg = parse_stores(
        f"cluster:\n  front_port: {front}\n  shard_proxy_port: {proxy}\n"
        f"  gateway_port: {gateway}\n  gateway_replicas: 1\n"
        "stores:\n  - id: a\n"
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx.render(cfg, tmp_path))
    for sub in ("client_body_temp", "proxy_temp"):
        (tmp_path / sub).mkdir()
    proc = subprocess.Popen(
        [find_binary("nginx"), "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: _port_open(front), timeout=10, what="nginx to listen")
        status, _, body = _http(
            front, b"GET /v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert (status, body["error"]["code"]) == (502, "gateway_unavailable")
        status, headers, body = _http(
            front, b"TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert (status, body["error"]["code"]) == (405, "method_not_allowed")
        assert headers["Allow"] == nginx.ALLOWED_METHODS
        long_uri = b"/v1/" + b"x" * 20_000
        status, _, body = _http(front, b"GET " + long_uri + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body["error"]["code"]) == (414, "uri_too_long")
        status, _, body = _http(front, b"GARBAGE\r\n\r\n")
        assert (status, body["error"]["code"]) == (400, "bad_request")
        status, _, body = _http(
            proxy, b"GET /a/v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert (status, body["error"]["code"]) == (502, "shard_unavailable")
    finally:
        proc.terminate()
        proc.wait(10)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
