"""deploy/k8s/: valid Kubernetes that matches stores.yaml (no cluster runs here)."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy import k8s
from deploy.compose import GATEWAY_PORT, SHARD_PORT
from deploy.topology import find_binary
from storeface.stores import StoresFile, parse_stores

ROOT = Path(__file__).resolve().parents[1]
STORES_TEXT = (ROOT / "config" / "stores.yaml").read_text()
CFG = parse_stores(STORES_TEXT)
K8S_VERSION = "1.30"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Every shape a group can take: an awkward id with an ONNX embedder, replicas elsewhere,
# and a store that is a group of its own.
ODD_TEXT = """\
cluster: {gateway_replicas: 3}
nodes:
  - id: edge_group_with_a_rather_long_name_that_goes_on_and_on-
    replicas: 3
    embedder: arcface
  - id: remote
    urls: ["http://10.0.0.5:9100"]
stores:
  - {id: s1, node: edge_group_with_a_rather_long_name_that_goes_on_and_on-}
  - {id: s2, node: remote}
  - {id: solo, embedder: dlib}
"""
ODD = parse_stores(ODD_TEXT)

Doc = dict[str, Any]


def _committed() -> list[Doc]:
    return [
        d
        for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]


DOCS = _committed()


def _rendered(cfg: StoresFile, text: str, image: str = k8s.IMAGE) -> list[Doc]:
    return [d for docs in k8s.render(cfg, text, image).values() for d in docs]


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def _pod(doc: Doc) -> Doc:
    return doc["spec"]["template"]


def _container(doc: Doc) -> Doc:
    (container,) = _pod(doc)["spec"]["containers"]
    return container


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def _selects(selector: dict[str, str], doc: Doc) -> bool:
    labels = _pod(doc)["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def _node(doc: Doc) -> str:
    command = _container(doc)["command"]
    return str(command[command.index("--node") + 1])


def _shard_sets(docs: list[Doc]) -> list[Doc]:
    return [
        d
        for d in docs
        if d["kind"] == "StatefulSet"
        and _container(d)["command"][:3] == ["python", "-m", "shard_node"]
    ]


def test_committed_files_are_the_ones_stores_yaml_generates(tmp_path: Path) -> None:
    assert k8s.main(["--check"]) == 0, "run `python -m deploy.k8s` after editing stores.yaml"
    assert sorted(p.name for p in (ROOT / "deploy" / "k8s").glob("*.yaml")) == sorted(
        k8s.render(CFG, STORES_TEXT)
    )
    # --check sees a missing, an edited and a left-over file; a write fixes all three
    assert k8s.main(["--out", str(tmp_path), "--check"]) == 1
    assert k8s.main(["--out", str(tmp_path)]) == 0
    assert k8s.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "shard-gone.yaml").write_text("kind: StatefulSet\n")
    assert k8s.main(["--out", str(tmp_path), "--check"]) == 1
    (tmp_path / "gateway.yaml").write_text("edited\n")
    assert k8s.main(["--out", str(tmp_path)]) == 0
    assert not (tmp_path / "shard-gone.yaml").exists()
    assert k8s.main(["--out", str(tmp_path), "--check"]) == 0


@pytest.mark.parametrize("source", ["committed", "odd"])
def test_every_manifest_validates_against_the_kubernetes_schemas(source: str) -> None:
    docs = DOCS if source == "committed" else _rendered(ODD, ODD_TEXT)
    kinds = set()
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        kinds.add(doc["kind"])
    assert kinds >= {
        *("StatefulSet", "Deployment", "Service", "ConfigMap"),
        *("PodDisruptionBudget", "HorizontalPodAutoscaler"),
    }
    # the validator is strict: a misspelt field is refused
    wrong = copy.deepcopy(_find(docs, "Deployment", "gateway"))
    wrong["spec"]["replicaz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSION, strict=True)


def test_every_node_group_has_its_statefulset_with_replicas_ports_and_probes() -> None:
    assert len(_shard_sets(DOCS)) == len(CFG.groups()) == len(CFG.nodes) < len(CFG.stores)
    for g in CFG.groups():
        name = k8s.shard_name(g.id)
        sts = _find(DOCS, "StatefulSet", name)
        c = _container(sts)
        assert sts["spec"]["replicas"] == g.replicas
        assert _node(sts) == g.id
        assert c["command"][c["command"].index("--port") + 1] == str(SHARD_PORT)
        assert c["ports"] == [{"name": "http", "containerPort": SHARD_PORT}]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": SHARD_PORT}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": SHARD_PORT}
        assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300
        # each replica its own snapshot volume: two writers must never share one
        env = _env(c)
        assert env["STOREFACE_SNAPSHOT_DIR"]["value"].startswith("/data/")
        assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        # workers fit the CPU the pod asks for, not the node's cores
        assert env["STOREFACE_WORKERS"]["value"] == c["resources"]["requests"]["cpu"]
        svc = _find(DOCS, "Service", sts["spec"]["serviceName"])
        assert _selects(svc["spec"]["selector"], sts)
        assert svc["spec"]["ports"] == [{"name": "http", "port": SHARD_PORT, "targetPort": "http"}]
        pdb = _find(DOCS, "PodDisruptionBudget", name)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert _selects(pdb["spec"]["selector"]["matchLabels"], sts)
        assert [
            d for d in _shard_sets(DOCS) if _selects(pdb["spec"]["selector"]["matchLabels"], d)
        ] == [sts], "a group's budget covers its own pods only"


def test_groups_of_every_shape_get_valid_distinct_names() -> None:
    docs = _rendered(ODD, ODD_TEXT)
    local = [g for g in ODD.groups() if not g.urls]
    sets = _shard_sets(docs)
    assert sorted(_node(d) for d in sets) == sorted(g.id for g in local)
    assert "remote" not in [_node(d) for d in sets], "it runs elsewhere"
    solo = _find(docs, "StatefulSet", "shard-solo")
    assert solo["spec"]["replicas"] == 2
    edge = next(d for d in sets if d is not solo)
    assert edge["spec"]["replicas"] == 3
    # an ONNX embedder (or the default, arcface where its files are) reads its weights from the
    # models volume; dlib's ship in its wheel
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in _container(edge)[
        "volumeMounts"
    ]
    claims = [v for v in _pod(edge)["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims[0]["persistentVolumeClaim"]["claimName"] == k8s.MODELS_CLAIM
    assert all(v["name"] != "models" for v in _pod(solo)["spec"]["volumes"])
    for doc in docs:
        name = doc["metadata"]["name"]
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        if doc["kind"] == "StatefulSet":
            assert len(name) <= 52, f"{name}: too long for its pods' revision label"
        for value in doc["metadata"]["labels"].values():
            assert len(value) <= 63 and re.match(r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$", value)
    assert k8s.shard_name("a_b") != k8s.shard_name("a-b-") != k8s.shard_name("a-b")


def test_each_shard_replica_and_gateway_gets_the_stores_file() -> None:
    cm = _find(DOCS, "ConfigMap", k8s.STORES_CONFIGMAP)
    assert cm["data"] == {"stores.yaml": STORES_TEXT}, "the ConfigMap is stores.yaml as it is"
    mounted = parse_stores(cm["data"]["stores.yaml"])
    for doc in [*_shard_sets(DOCS), _find(DOCS, "Deployment", "gateway")]:
        c = _container(doc)
        path = Path(_env(c)["STOREFACE_STORES_FILE"]["value"])
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent)]
        assert "subPath" not in mount, "a subPath mount never sees stores.yaml change"
        (vol,) = [v for v in _pod(doc)["spec"]["volumes"] if v["name"] == mount["name"]]
        assert vol["configMap"]["name"] == k8s.STORES_CONFIGMAP and path.name == "stores.yaml"
    # each node group's replicas host the stores that name it, and every store is hosted once
    raw = yaml.safe_load(STORES_TEXT)
    expected = {
        n["id"]: sorted(s["id"] for s in raw["stores"] if s.get("node") == n["id"])
        for n in raw["nodes"]
    }
    served = {}
    for sts in _shard_sets(DOCS):
        group = mounted.group(_node(sts))
        assert group is not None, _node(sts)
        served[_node(sts)] = sorted(group.stores)
    assert served == expected
    assert sorted(s for ids in served.values() for s in ids) == sorted(
        s["id"] for s in raw["stores"]
    )


def test_the_gateway_takes_its_keys_from_a_secret_and_scales() -> None:
    gw = _find(DOCS, "Deployment", "gateway")
    env = _env(_container(gw))
    admin = env["STOREFACE_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    assert admin == {"name": k8s.KEYS_SECRET, "key": "admin-key", "optional": False}
    cameras = env["STOREFACE_CAMERA_KEYS"]["valueFrom"]["secretKeyRef"]
    assert cameras["name"] == k8s.KEYS_SECRET and cameras["optional"] is True
    assert not [d for d in DOCS if d["kind"] == "Secret"], "ops create the secret (README)"
    for doc in _workloads(DOCS):
        for e in _container(doc).get("env", []):
            if "KEY" in e["name"]:
                assert "value" not in e, f"a literal key in {doc['metadata']['name']}"
    assert "storeface-keys" in (ROOT / "README.md").read_text()
    # the gateway reaches the node groups through nginx's shard port, as in compose
    proxy = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", env["STOREFACE_SHARD_PROXY"]["value"])
    assert proxy and int(proxy.group(2)) == CFG.cluster.shard_proxy_port
    svc = _find(DOCS, "Service", proxy.group(1))
    assert [p["port"] for p in svc["spec"]["ports"]] == [CFG.cluster.shard_proxy_port]
    assert _selects(svc["spec"]["selector"], _find(DOCS, "Deployment", "nginx"))
    c = _container(gw)
    assert c["readinessProbe"]["httpGet"]["port"] == c["ports"][0]["containerPort"] == GATEWAY_PORT
    hpa = _find(DOCS, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["spec"]["minReplicas"] == CFG.cluster.gateway_replicas < hpa["spec"]["maxReplicas"]
    assert "replicas" not in gw["spec"], "the autoscaler owns the count; apply must not reset it"
    assert _find(DOCS, "PodDisruptionBudget", "gateway")["spec"]["maxUnavailable"] == 1


def test_redis_runs_a_primary_a_replica_and_three_sentinels() -> None:
    redis = _find(DOCS, "StatefulSet", "redis")
    sentinel = _find(DOCS, "StatefulSet", "redis-sentinel")
    assert (redis["spec"]["replicas"], sentinel["spec"]["replicas"]) == (2, 3)
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    budget = _find(DOCS, "PodDisruptionBudget", "redis-sentinel")["spec"]
    assert budget["minAvailable"] == k8s.QUORUM == 2, "a drain never leaves less than a quorum"
    scripts = _find(DOCS, "ConfigMap", "redis-scripts")["data"]
    assert "--appendonly yes" in scripts["redis.sh"]
    monitor = re.search(r"sentinel monitor (\S+) \$primary (\d+) (\d+)", scripts["sentinel.sh"])
    assert monitor and monitor.groups() == (k8s.SENTINEL_SERVICE, str(k8s.REDIS_PORT), "2")
    for name, sts in (("redis", redis), ("redis-sentinel", sentinel)):
        svc = _find(DOCS, "Service", sts["spec"]["serviceName"])
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
        assert _selects(svc["spec"]["selector"], sts) and svc["metadata"]["name"] == name
    for doc in [*_shard_sets(DOCS), _find(DOCS, "Deployment", "gateway")]:
        env = _env(_container(doc))
        sentinels = env["STOREFACE_REDIS_SENTINELS"]["value"].split(",")
        assert sentinels == [
            f"redis-sentinel-{i}.redis-sentinel:{k8s.SENTINEL_PORT}" for i in range(3)
        ]
        assert env["STOREFACE_REDIS_SERVICE"]["value"] == k8s.SENTINEL_SERVICE
        assert env["STOREFACE_REDIS_URL"]["value"] == f"redis://redis-0.redis:{k8s.REDIS_PORT}/0"


def _stub_bin(tmp_path: Path) -> Path:
    """hostname, redis-cli, redis-server and nslookup that answer from the environment."""
    stubs = {
        "hostname": 'echo "$STUB_HOST"',
        "redis-cli": 'case "$*" in\n'
        '  *SENTINEL*) [ -n "${STUB_SENTINEL:-}" ] || exit 1; echo "$STUB_SENTINEL"; echo 6379;;\n'
        '  *DBSIZE*) echo "${STUB_DBSIZE:-0}";;\n'
        "esac",
        "redis-server": 'echo "started: $*"',
        "nslookup": "exit 0",
    }
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _run_script(tmp_path: Path, name: str, **stub: str) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    script = tmp_path / name
    text = _find(DOCS, "ConfigMap", "redis-scripts")["data"][name]
    script.write_text(text.replace("/data", str(data)))
    env = {**os.environ, "PATH": f"{_stub_bin(tmp_path)}:{os.environ['PATH']}"}
    env.update({f"STUB_{k.upper()}": v for k, v in stub.items()})
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, check=False)


@pytest.mark.parametrize(
    ("stub", "started"),
    [
        ({"host": "redis-0"}, "--replica-announce-ip redis-0.redis$"),  # first start
        ({"host": "redis-1"}, "--replicaof redis-0.redis 6379$"),
        ({"host": "redis-0", "sentinel": "redis-1.redis"}, "--replicaof redis-1.redis 6379$"),
        ({"host": "redis-0", "sentinel": "redis-0.redis", "dbsize": "0"}, "redis-0.redis$"),
        # the known trap: a primary back without its data while its replica holds some
        ({"host": "redis-0", "sentinel": "redis-0.redis", "dbsize": "42"}, None),
    ],
)
def test_redis_starts_where_the_sentinels_say_and_never_empty_over_a_replica(
    tmp_path: Path, stub: dict[str, str], started: str | None
) -> None:
    run = _run_script(tmp_path, "redis.sh", **stub)
    if started is None:
        assert run.returncode == 1 and "started" not in run.stdout
        assert "waiting for a failover" in run.stderr
        (tmp_path / "data" / "appendonlydir").mkdir()  # with its data it is the primary again
        run = _run_script(tmp_path, "redis.sh", **stub)
        started = "--replica-announce-ip redis-0.redis$"
    assert run.returncode == 0, run.stderr
    assert re.search(started, run.stdout.strip()), run.stdout
    assert "--appendonly yes" in run.stdout


@pytest.mark.parametrize(
    ("stub", "primary"),
    [({"host": "redis-sentinel-0"}, "redis-0.redis"),
     ({"host": "redis-sentinel-2", "sentinel": "redis-1.redis"}, "redis-1.redis")],
)  # fmt: skip
def test_a_sentinel_monitors_the_primary_its_peers_know(
    tmp_path: Path, stub: dict[str, str], primary: str
) -> None:
    run = _run_script(tmp_path, "sentinel.sh", **stub)
    assert run.returncode == 0, run.stderr
    assert "--sentinel" in run.stdout
    conf = (tmp_path / "data" / "sentinel.conf").read_text()
    assert f"sentinel monitor storeface {primary} 6379 2\n" in conf
    assert f"sentinel announce-ip {stub['host']}.redis-sentinel\n" in conf


def test_every_pod_has_resources_probes_and_services_that_reach_it() -> None:
    for doc in _workloads(DOCS):
        c = _container(doc)
        name = doc["metadata"]["name"]
        for bound in ("requests", "limits"):
            assert set(c["resources"][bound]) == {"cpu", "memory"}, name
        assert "readinessProbe" in c and "livenessProbe" in c, name
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            check = c[probe].get("httpGet") or c[probe].get("tcpSocket")
            if check:
                assert check["port"] in ports.values(), f"{name} {probe}"
    for svc in [d for d in DOCS if d["kind"] == "Service"]:
        (target,) = [d for d in _workloads(DOCS) if _selects(svc["spec"]["selector"], d)]
        names = {p["name"] for p in _container(target)["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names, svc["metadata"]["name"]
    for pdb in [d for d in DOCS if d["kind"] == "PodDisruptionBudget"]:
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert len([d for d in _workloads(DOCS) if _selects(selector, d)]) == 1


def test_nginx_routes_each_group_to_its_service_and_passes_nginx_t(tmp_path: Path) -> None:
    cm = _find(DOCS, "ConfigMap", "nginx")
    conf = cm["data"]["nginx.conf"]
    assert conf == k8s.render_nginx(CFG)
    annotations = _pod(_find(DOCS, "Deployment", "nginx"))["metadata"]["annotations"]
    assert annotations["storeface/nginx-conf-sha256"] == hashlib.sha256(conf.encode()).hexdigest()
    for g in CFG.groups():
        assert f"location /{g.id}/ " in conf
        block = re.search(rf"upstream node_{g.id.replace('-', '_')} \{{(.*?)\}}", conf, re.S)
        assert block, g.id
        servers = re.findall(r"server (\S+) ", block.group(1))
        assert servers == [f"{k8s.shard_name(g.id)}:{SHARD_PORT}"] * g.replicas
    for host, port in set(re.findall(r"server ([a-z0-9-]+):(\d+) ", conf)):
        svc = _find(DOCS, "Service", host)
        assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
    assert "/metrics/gateway-" not in conf, "through a Service it would mix gateway pods"
    front = _find(DOCS, "Service", "front")["spec"]
    assert front["type"] == "LoadBalancer"
    assert [p["port"] for p in front["ports"]] == [CFG.cluster.front_port]
    local = re.sub(r"server [a-z0-9-]+:", "server 127.0.0.1:", conf)
    local = local.replace("/var/log/nginx/", f"{tmp_path}/")
    path = tmp_path / "nginx.conf"
    path.write_text(local)
    check = subprocess.run(
        [find_binary("nginx"), "-p", str(tmp_path), "-c", str(path), "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_the_image_is_one_project_image_and_configurable() -> None:
    images = {
        _container(d)["image"] for d in [*_shard_sets(DOCS), _find(DOCS, "Deployment", "gateway")]
    }
    assert images == {k8s.IMAGE}
    docs = _rendered(CFG, STORES_TEXT, image="registry.example/storeface:1.2")
    ours = [d for d in _workloads(docs) if _container(d)["image"].startswith("registry.example/")]
    assert len(ours) == len(CFG.groups()) + 1
