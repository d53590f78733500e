"""`make run`: the whole cluster under supervisord, from stores.yaml; Ctrl-C stops it all."""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from deploy import nginx, redis_ha
from deploy.topology import ROOT, Program, plan
from storeface.embedders import AUTO, resolve_embedder
from storeface.errors import ConfigError
from storeface.paths import models_dir
from storeface.stores import StoresFile, load_stores

PRIORITY = {"sentinel": 5, "redis": 10, "shard": 20, "gateway": 30, "nginx": 40}


def ensure_keys(run_dir: Path, cfg: StoresFile) -> Path:
    """Generate the admin key and one camera key per store, once, readable only by us."""
    path = run_dir / "keys.yaml"
    doc: dict = yaml.safe_load(path.read_text()) if path.exists() else {}
    doc = doc or {}
    changed = False
    if not doc.get("admin_key"):
        doc["admin_key"] = os.environ.get("STOREFACE_ADMIN_KEY") or secrets.token_urlsafe(24)
        changed = True
    cams = doc.setdefault("camera_keys", {})
    have = {s for stores in cams.values() for s in stores}
    for s in cfg.stores:
        if s.id not in have:
            cams[f"cam-{s.id}-{secrets.token_urlsafe(12)}"] = [s.id]
            changed = True
    if changed:
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        path.chmod(0o600)
    return path


def _ini_env(env: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"'.replace("%", "%%") for k, v in env.items())


def supervisor_conf(programs: list[Program], run_dir: Path) -> str:
    logs = run_dir / "logs"
    out = [
        f"[unix_http_server]\nfile={run_dir}/supervisor.sock\nchmod=0700\n",
        f"[supervisord]\nnodaemon=true\nlogfile={logs}/supervisord.log\n"
        f"pidfile={run_dir}/supervisord.pid\nchildlogdir={logs}\nloglevel=info\n",
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
        f"[supervisorctl]\nserverurl=unix://{run_dir}/supervisor.sock\n",
    ]
    for p in programs:
        kind = p.name.split("-")[0]
        env = f"environment={_ini_env(p.env)}\n" if p.env else ""
        out.append(
            f"[program:{p.name}]\ncommand={shlex.join(p.argv).replace('%', '%%')}\n"
            f"directory={ROOT}\n{env}priority={PRIORITY[kind]}\nautostart=true\n"
            "autorestart=true\nstartsecs=2\nstartretries=10\nstopasgroup=true\n"
            "killasgroup=true\nstopwaitsecs=15\nredirect_stderr=true\n"
            f"stdout_logfile={logs}/{p.name}.log\nstdout_logfile_maxbytes=20MB\n"
        )
    return "\n".join(out)


class Cluster:
    """The files a running cluster is made of, and how to (re)write them."""

    def __init__(self, stores_file: Path, run_dir: Path, nginx_conf: Path | None = None) -> None:
        self.stores_file = stores_file.resolve()
        self.run_dir = run_dir.resolve()
        self.conf = self.run_dir / "supervisord.conf"
        self.nginx_conf = (
            nginx_conf or ROOT / "deploy" / "nginx" / "generated" / "nginx.conf"
        ).resolve()

    def write(self) -> StoresFile:
        cfg = load_stores(self.stores_file)
        for d in ("redis", "logs", "snapshots", "nginx"):
            (self.run_dir / d).mkdir(parents=True, exist_ok=True)
        keys = ensure_keys(self.run_dir, cfg)
        self.nginx_conf.parent.mkdir(parents=True, exist_ok=True)
        self.nginx_conf.write_text(nginx.render(cfg, self.run_dir / "nginx"))
        programs = plan(cfg, self.stores_file, self.run_dir, self.nginx_conf)
        for p in programs:
            if p.name.startswith("gateway"):
                p.env["STOREFACE_KEYS_FILE"] = str(keys)
        self.conf.write_text(supervisor_conf(programs, self.run_dir))
        return cfg

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def reload(self) -> StoresFile:
        """Apply an edited stores.yaml: start/stop shards, then reload nginx gracefully."""
        cfg = self.write()
        print(self.ctl("update").stdout.strip() or "supervisor: nothing to change")
        wait_shards(cfg, timeout=180)
        self.ctl("signal", "HUP", "nginx")  # nginx reloads without dropping requests
        return cfg


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def wait_shards(cfg: StoresFile, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for g in cfg.groups():
        for port in [] if g.urls else g.ports:
            url = f"http://{cfg.cluster.host}:{port}/readyz"
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)


def wait_front(cfg: StoresFile, timeout: float) -> bool:
    url = f"http://{cfg.cluster.host}:{cfg.cluster.front_port}/readyz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200 and all(r.json()["details"]["stores"].values()):
                return True
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    return False


def embedder_lines(cfg: StoresFile) -> str:
    """Which embedder each node group runs, and a warning where none was named and the
    accurate one's model files are missing (a store already built keeps its own)."""
    lines = []
    for g in cfg.groups():
        name, note = resolve_embedder(g.embedder, {"models_dir": str(models_dir())})
        try:  # what the node runs, which a store built earlier may have decided
            info = httpx.get(f"{cfg.node_urls(g.id)[0]}/v1/info", timeout=2).json()
            name, note = info["embedder"], info.get("embedder_note") or ""
        except (httpx.HTTPError, ValueError, KeyError):
            pass  # not up (or not this version): what it will run, from the model files
        lines.append(
            f"  embedder: {g.id} runs {name}" + (" (default)" if g.embedder == AUTO else "")
        )
        if note:
            lines.append(f"  WARNING {g.id}: {note}")
    return "\n".join(lines) + "\n"


def banner(cfg: StoresFile, keys: Path, seconds: float) -> str:
    c = cfg.cluster
    front = f"http://{c.host}:{c.front_port}"
    nodes = "; ".join(
        f"{g.id} ({g.replicas} replicas): {', '.join(g.stores) or 'no stores yet'}"
        for g in cfg.groups()
    )
    photo = "../shared/faces/lfw_dev/George_Clooney/George_Clooney_0001.jpg"
    embedders = embedder_lines(cfg)
    return f"""
Storeface is up in {seconds:.0f}s at {front}  (API docs: {front}/docs)
  nodes:   {nodes}
{embedders}  keys:    {keys}  (the admin key and one camera key per store)
  try:     export STOREFACE_API_KEY=$(.venv/bin/python -m deploy.run admin-key)
           curl -s -H "X-API-Key: $STOREFACE_API_KEY" -F store_id=store-a -F image=@{photo} \\
             {front}/v1/recognize
  logs:    {keys.parent}/logs/
Ctrl-C stops everything.
"""


def up(cluster: Cluster) -> int:
    t0 = time.monotonic()
    cfg = cluster.write()
    c = cfg.cluster
    ports = [c.front_port, c.shard_proxy_port, c.redis_port, redis_ha.replica_port(c.redis_port)]
    ports += redis_ha.sentinel_ports(c.redis_port)
    busy = [p for p in ports if not port_free(c.host, p)]
    if busy:
        print(
            f"ports in use: {busy}: is a cluster already running? (see {cluster.run_dir})",
            file=sys.stderr,
        )
        return 1
    sup = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(cluster.conf)],
        start_new_session=True,
    )

    def stop(*_: object) -> None:
        if sup.poll() is None:
            sup.send_signal(signal.SIGTERM)  # supervisord stops every program, then exits

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if wait_front(cfg, timeout=300):
        print(banner(cfg, cluster.run_dir / "keys.yaml", time.monotonic() - t0), flush=True)
    else:
        print(f"the cluster did not become ready; see {cluster.run_dir}/logs", file=sys.stderr)
    stamp = cluster.stores_file.stat().st_mtime_ns
    while sup.poll() is None:
        time.sleep(1.0)
        try:
            now = cluster.stores_file.stat().st_mtime_ns
        except OSError:
            continue
        if now != stamp:  # stores.yaml is watched: an edit is applied without a command
            stamp = now
            try:
                cluster.reload()
                print("stores.yaml applied", flush=True)
            except ConfigError as exc:
                print(f"stores.yaml not applied: {exc.message}", file=sys.stderr, flush=True)
    return sup.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.run", description=__doc__)
    parser.add_argument(
        "command", nargs="?", default="up", choices=["up", "reload", "write", "admin-key"]
    )
    parser.add_argument("--stores", type=Path, default=ROOT / "config" / "stores.yaml")
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run")
    parser.add_argument(
        "--nginx-conf", type=Path, default=None, help="default: deploy/nginx/generated/nginx.conf"
    )
    args = parser.parse_args(argv)
    cluster = Cluster(args.stores, args.run_dir, args.nginx_conf)
    try:
        if args.command == "write":
            cluster.write()
            print(cluster.conf)
            return 0
        if args.command == "admin-key":
            keys = cluster.run_dir / "keys.yaml"
            if not keys.exists():
                print(f"no keys yet at {keys}: start the cluster with `make run`", file=sys.stderr)
                return 1
            print(yaml.safe_load(keys.read_text())["admin_key"])
            return 0
        if args.command == "reload":
            cluster.reload()
            return 0
        return up(cluster)
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
