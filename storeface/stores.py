"""`config/stores.yaml`: the one map ops edit. Typed, validated, errors name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from storeface.errors import ConfigError

FallbackPolicy = Literal["all", "region", "list", "none"]


class StoreConfig(BaseModel):
    """One store: where its shard answers and how recognition behaves there."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    region: str = ""
    embedder: str = "dlib"
    embedder_options: dict[str, Any] = Field(default_factory=dict)
    threshold: float | None = Field(default=None, gt=0)  # None: the embedder's measured one
    auto_register: bool = True
    fallback: FallbackPolicy = "all"
    fallback_stores: list[str] = Field(default_factory=list)
    learn_cross_store: bool = True
    min_face_size: int = Field(default=40, ge=0)  # smaller unknown faces get no FaceId
    gallery: str | None = None  # a <person>/<photo> folder ingested at shard start-up
    replicas: int = Field(default=2, ge=1, le=32)
    port: int | None = Field(default=None, ge=1024, le=65000)  # first replica's port
    shard_urls: list[str] = Field(default_factory=list)


class ClusterConfig(BaseModel):
    """Where the local cluster listens; used by `make run` and the nginx generator."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    front_port: int = 8080  # nginx: cameras and tills
    shard_proxy_port: int = 8081  # nginx: gateway → store upstreams
    gateway_port: int = 8100  # first gateway replica
    gateway_replicas: int = Field(default=2, ge=1, le=32)
    shard_port: int = 9100  # first shard port when a store names none
    redis_port: int = 6380


class StoresFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    stores: list[StoreConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> StoresFile:
        ids = [s.id for s in self.stores]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate store ids: {', '.join(dupes)}")
        for s in self.stores:
            unknown = [f for f in s.fallback_stores if f not in ids]
            if unknown:
                raise ValueError(f"store {s.id} falls back to unknown stores: {unknown}")
        ports: dict[int, str] = {}
        for s in self.stores:
            for p in self.replica_ports(s.id):
                if p in ports:
                    raise ValueError(f"port {p} of store {s.id} is also used by {ports[p]}")
                ports[p] = s.id
        return self

    def store(self, store_id: str) -> StoreConfig | None:
        return next((s for s in self.stores if s.id == store_id), None)

    def replica_ports(self, store_id: str) -> list[int]:
        """Ports of a store's replicas: its own `port`, else laid out after the others."""
        for i, s in enumerate(self.stores):
            if s.id == store_id:
                first = s.port if s.port is not None else self.cluster.shard_port + 10 * i
                return [first + r for r in range(s.replicas)]
        raise KeyError(store_id)

    def shard_urls(self, store_id: str) -> list[str]:
        """Where the gateway reaches a store: its explicit URLs, else nginx's upstream."""
        s = self.store(store_id)
        if s is None:
            raise KeyError(store_id)
        if s.shard_urls:
            return list(s.shard_urls)
        c = self.cluster
        return [f"http://{c.host}:{c.shard_proxy_port}/{s.id}"]


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree to a 1-based line."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def parse_stores(text: str, source: str = "stores.yaml") -> StoresFile:
    """Parse and validate; a ConfigError names the file, the line and the problem."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: expected a mapping with a `stores:` list")
    try:
        return StoresFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_of(root, loc)
            path = ".".join(str(p) for p in loc) or "(file)"
            problems.append(f"{source}:{line or '?'}: {path}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from exc


def load_stores(path: str | Path) -> StoresFile:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from exc
    return parse_stores(text, str(p))
