"""nginx config from stores.yaml: the front door, and one upstream per node group."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from deploy.topology import ROOT
from storeface.images import MAX_IMAGE_BYTES
from storeface.stores import StoresFile, load_stores, upstream_name

# POSTs nginx may replay on the next replica: read-only or idempotent by design
# (recognize dedupes registrations and visits; photo enrollment dedupes by content hash).
FRONT_RETRYABLE = r"^/v1/(recognize|search|verify|stores/[^/]+/faces)$"
SHARD_RETRYABLE = "v1/(search|stores/[^/]+/(identify|faces|register))"
MAX_BODY_MB = MAX_IMAGE_BYTES // (1024 * 1024)
TOO_LARGE = (
    '{"error":{"code":"image_too_large",'
    f'"message":"the upload is larger than {MAX_BODY_MB} MB"}}}}'
)
NO_UPSTREAM = '{"error":{"code":"shard_unavailable","message":"no such node group upstream"}}'
# nginx's own answers (not the services', which pass through untouched: no
# proxy_intercept_errors) in the API's error model, so a client parses one format.
NGINX_ERRORS = {
    400: ("bad_request", "the request is malformed"),
    405: ("method_not_allowed", "the method is not allowed here"),
    408: ("request_timeout", "the request was not received in time"),
    414: ("uri_too_long", "the request URI is too long"),
    494: ("headers_too_large", "the request headers are too large"),
    500: ("proxy_error", "the front door failed"),
    502: ("{behind}_unavailable", "no {behind} answered"),
    504: ("{behind}_timeout", "the {behind} did not answer in time"),
}
ALLOWED_METHODS = "GET, POST, PUT, DELETE"


def error_pages(behind: str, indent: str = "        ") -> str:
    """error_page directives and their named locations, one JSON body per status;
    `behind` names what the server proxies to (gateway, shard)."""
    lines = []
    for status, (code, message) in NGINX_ERRORS.items():
        code, message = code.format(behind=behind), message.format(behind=behind)
        body = f'{{"error":{{"code":"{code}","message":"{message}"}}}}'
        allow = f' add_header Allow "{ALLOWED_METHODS}" always;' if status == 405 else ""
        # A URI, not a named location: nginx cannot jump to a named one from a request
        # line it could not parse (400, 414), and answers its own HTML 500 instead.
        lines.append(f"{indent}error_page {status} /_error/{status};")
        lines.append(
            f"{indent}location = /_error/{status} {{ internal; default_type application/json;"
            f"{allow} return {status} '{body}'; }}"
        )
    return "\n".join(lines)


def render(
    cfg: StoresFile,
    run_dir: Path | None,
    *,
    listen_host: str | None = None,
    gateway_addrs: list[str] | None = None,
    replica_addrs: Callable[[str], list[str]] | None = None,
) -> str:
    """The whole nginx.conf; addresses default to the local cluster's ports."""
    c = cfg.cluster
    host = listen_host if listen_host is not None else c.host
    gateways = gateway_addrs or [
        f"{c.host}:{c.gateway_port + i}" for i in range(c.gateway_replicas)
    ]

    def replicas(node_id: str) -> list[str]:
        if replica_addrs:
            return replica_addrs(node_id)
        return [f"{c.host}:{p}" for p in cfg.replica_ports(node_id)]

    logs = f"{run_dir}/" if run_dir else "/var/log/nginx/"
    pid = f"pid {run_dir}/nginx.pid;" if run_dir else ""
    listen = f"{host}:" if host else ""
    upstreams = []
    groups = [g for g in cfg.groups() if not g.urls]  # explicit URLs bypass nginx
    for g in groups:
        # max_fails=3: one 503 (a replica still warming up answering /readyz, a store still
        # loading) must not mark a live replica down for fail_timeout; if its peer died in
        # that window the whole group would have no replica (seen in CI). A dead replica
        # still goes down after three refused connects, each retried on another replica.
        servers = "\n".join(
            f"        server {a} max_fails=3 fail_timeout=5s;" for a in replicas(g.id)
        )
        upstreams.append(
            f"    upstream {upstream_name(g.id)} {{\n{servers}\n        keepalive 16;\n    }}"
        )
    locations = []
    for g in groups:
        up = upstream_name(g.id)
        locations.append(f"""        location ~ ^/{g.id}/({SHARD_RETRYABLE})$ {{
            rewrite ^/{g.id}/(.*)$ /$1 break;
            proxy_pass http://{up};
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries 3;
        }}
        location /{g.id}/ {{
            proxy_pass http://{up}/;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
        }}""")
    # max_fails=0: a gateway's 503 (its shard or Redis briefly gone, or overload) is tried
    # on another gateway, but never marks it down: in a burst that would take every gateway
    # out of the front door for fail_timeout. A dead gateway refuses at once anyway.
    gw_servers = "\n".join(f"        server {a} max_fails=0;" for a in gateways)
    # Counters are per process: behind a balancer, scrapes would alternate between gateways
    # (and read as resets), so each gateway has its own path and /metrics says so.
    metric_paths = [f"/metrics/gateway-{i}" for i in range(1, len(gateways) + 1)]
    per_gateway = "\n".join(
        f"        location = {path} {{ proxy_pass http://{addr}/metrics; }}"
        for path, addr in zip(metric_paths, gateways, strict=True)
    )
    no_mix = (
        '{"error":{"code":"not_found","message":"metrics are per gateway: scrape '
        + ", ".join(metric_paths)
        + '"}}'
    )
    return f"""# Generated from stores.yaml by `python -m deploy.nginx`; do not edit by hand.
worker_processes 1;
error_log stderr warn;
{pid}
events {{ worker_connections 1024; }}

http {{
    log_format timed '$remote_addr "$request" $status $body_bytes_sent '
                     'rt=$request_time urt=$upstream_response_time up=$upstream_addr';
    access_log {logs}access.log timed;
    client_body_temp_path {logs}client_body_temp;
    proxy_temp_path {logs}proxy_temp;
    client_max_body_size {MAX_BODY_MB}m;
    client_body_buffer_size 1m;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_connect_timeout 2s;
    proxy_send_timeout 30s;
    proxy_read_timeout 30s;

    upstream gateway {{
{gw_servers}
        keepalive 32;
    }}
{chr(10).join(upstreams)}

    # The front door: cameras and tills.
    server {{
        listen {listen}{c.front_port};
{error_pages("gateway")}
        error_page 413 = @too_large;
        location @too_large {{
            default_type application/json;
            return 413 '{TOO_LARGE}';
        }}
        location / {{
            proxy_pass http://gateway;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 2;
        }}
        location = /metrics {{
            default_type application/json;
            return 404 '{no_mix}';
        }}
{per_gateway}
        location ~ {FRONT_RETRYABLE} {{
            proxy_pass http://gateway;
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_tries 2;
        }}
    }}

    # The gateways' way to each node group's replicas.
    server {{
        listen {listen}{c.shard_proxy_port};
{error_pages("shard")}
{chr(10).join(locations)}
        location / {{
            default_type application/json;
            return 503 '{NO_UPSTREAM}';
        }}
    }}
}}
"""


def main() -> None:
    """`python -m deploy.nginx [stores.yaml]`: write deploy/nginx/generated/nginx.conf."""

    stores_file = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "config" / "stores.yaml"
    run_dir = (ROOT / ".run" / "nginx").resolve()
    out = ROOT / "deploy" / "nginx" / "generated" / "nginx.conf"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(load_stores(stores_file), run_dir))
    print(out)


if __name__ == "__main__":
    main()
