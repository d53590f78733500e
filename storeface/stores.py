"""`config/stores.yaml`: the one map ops edit. Typed, validated, errors name the line.

Stores live on shard node groups: a group's replicas each host every store of the group.
A store that names no `node:` is a group of its own, as before node groups existed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from storeface.embedders import may_match
from storeface.errors import ConfigError

log = logging.getLogger("storeface.stores")

FallbackPolicy = Literal["all", "region", "list", "none"]
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class LearnViews(BaseModel):
    """When a recognition teaches its FaceId one more view (an embedding) at its store;
    the fractions are of the store's threshold. Defaults measured by bench/views.py
    (docs/benchmarks.md, "More than one view per FaceId")."""

    model_config = ConfigDict(extra="forbid")

    max_per_face: int = Field(default=3, ge=1, le=100)  # vectors a FaceId holds here, at most
    confident: float = Field(default=0.7, gt=0, le=1)  # learn from matches this close only
    novel: float = Field(default=0.2, ge=0, lt=1)  # and only if no view of it is this close
    margin: float = Field(default=0.1, ge=0, le=1)  # and the next FaceId this much further

    @model_validator(mode="after")
    def _novel_below_confident(self) -> LearnViews:
        if self.novel >= self.confident:
            raise ValueError(
                f"novel ({self.novel}) must be below confident ({self.confident}): "
                "no match could teach a view"
            )
        return self


class StoreConfig(BaseModel):
    """One store: the node group that hosts it and how recognition behaves there."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    node: str | None = None  # the node group hosting it; None: a group of its own
    region: str = ""
    # Unset: arcface where its model files are, else dlib (decided by the node at start-up).
    embedder: str = "auto"  # with `node:`, the node's unless set (and then it must match)
    embedder_options: dict[str, Any] = Field(default_factory=dict)
    threshold: float | None = Field(default=None, gt=0)  # None: the embedder's measured one
    # How much lower the threshold goes for each tenfold more faces than 1,000 (a bigger
    # store meets more look-alikes); 0: fixed; None: the embedder's (storeface/matching.py).
    threshold_per_decade: float | None = Field(default=None, ge=0, le=0.2)
    auto_register: bool = True
    fallback: FallbackPolicy = "all"
    fallback_stores: list[str] = Field(default_factory=list)
    learn_cross_store: bool = True
    min_face_size: int = Field(default=40, ge=0)  # smaller unknown faces get no FaceId
    # Unknown faces more blurred (Laplacian variance) or turned (degrees) get no FaceId either:
    # they would not match when the person comes back (docs/benchmarks.md, "Accuracy").
    min_face_blur: float = Field(default=20.0, ge=0)
    max_face_yaw: float = Field(default=45.0, ge=0, le=90)
    # A confident, unambiguous match of a good face adds its embedding to the FaceId (up to
    # max_per_face), so the person matches from more angles. Off unless set (`{}`: the
    # defaults): more views per FaceId also draw more strangers to it (docs/benchmarks.md).
    learn_views: LearnViews | None = None
    gallery: str | None = None  # a <person>/<photo> folder ingested at shard start-up
    # Days an unbound visitor FaceId is kept unseen; null: kept; unset: the chain's default.
    visitor_retention_days: int | None = Field(default=None, ge=1, le=36500)
    # Only for a store without `node:` (its own group); a node group sets these itself.
    replicas: int = Field(default=2, ge=1, le=32)
    port: int | None = Field(default=None, ge=1024, le=65000)  # first replica's port
    shard_urls: list[str] = Field(default_factory=list)


class NodeConfig(BaseModel):
    """A shard node group: `replicas` processes, each hosting every store of the group."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    replicas: int = Field(default=2, ge=1, le=32)
    port: int | None = Field(default=None, ge=1024, le=65000)  # first replica; others follow
    embedder: str = "auto"  # arcface where its model files are, else dlib
    embedder_options: dict[str, Any] = Field(default_factory=dict)
    urls: list[str] = Field(default_factory=list)  # explicit replica URLs (other hosts)


@dataclass(frozen=True)
class NodeGroup:
    """A node group as resolved from the file: declared under `nodes:` or implied by a store."""

    id: str
    replicas: int
    ports: tuple[int, ...]
    embedder: str
    embedder_options: dict[str, Any]
    urls: tuple[str, ...]
    stores: tuple[str, ...]
    declared: bool  # False: the group of a store that names no node
    loc: tuple[str | int, ...]  # where it is defined in the file, for error lines


def upstream_name(node_id: str) -> str:
    """The nginx upstream of a node group."""
    return f"node_{node_id.replace('-', '_')}"


class ClusterConfig(BaseModel):
    """Where the local cluster listens; used by `make run` and the nginx generator."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    front_port: int = 8080  # nginx: cameras and tills
    shard_proxy_port: int = 8081  # nginx: gateway → node group upstreams
    gateway_port: int = 8100  # first gateway replica
    gateway_replicas: int = Field(default=2, ge=1, le=32)
    shard_port: int = 9100  # first shard port when a group names none
    redis_port: int = 6380


class ConfigProblem(ValueError):
    """An inconsistency between entries; `loc` points into the file for the error's line."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        self.loc = loc
        super().__init__(message)


def _hosted_store_fits(i: int, s: StoreConfig, node: NodeConfig) -> None:
    """A store on a node group sets nothing that belongs to the group."""
    for name in ("replicas", "port", "shard_urls"):
        if name in s.model_fields_set:
            raise ConfigProblem(
                ("stores", i, name),
                f"store {s.id} is hosted by node {node.id}: set {name} on the node",
            )
    if "embedder" in s.model_fields_set and s.embedder != node.embedder:
        raise ConfigProblem(
            ("stores", i, "embedder"),
            f"store {s.id} uses embedder {s.embedder} but its node {node.id} runs "
            f"{node.embedder}: one embedder per node group",
        )
    if "embedder_options" in s.model_fields_set and s.embedder_options != node.embedder_options:
        raise ConfigProblem(
            ("stores", i, "embedder_options"),
            f"store {s.id}: embedder_options belong to its node {node.id}",
        )


class StoresFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    # The chain's default for stores that set none; null: visitors are kept until erased.
    visitor_retention_days: int | None = Field(default=30, ge=1, le=36500)
    nodes: list[NodeConfig] = Field(default_factory=list)
    stores: list[StoreConfig] = Field(min_length=1)
    _groups: dict[str, NodeGroup] = PrivateAttr(default_factory=dict)
    _store_group: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> StoresFile:
        self._check_stores()
        self._check_nodes()
        self._resolve_groups()
        self._check_ports()
        return self

    def _check_stores(self) -> None:
        ids = [s.id for s in self.stores]
        for i, s in enumerate(self.stores):
            if s.id in ids[:i]:
                raise ConfigProblem(("stores", i, "id"), f"duplicate store ids: {s.id}")
            unknown = [f for f in s.fallback_stores if f not in ids]
            if unknown:
                raise ConfigProblem(
                    ("stores", i, "fallback_stores"),
                    f"store {s.id} falls back to unknown stores: {unknown}",
                )

    def _check_nodes(self) -> None:
        """Node ids are unique; a hosted store names a known node and takes its embedder."""
        nodes = {n.id: n for n in self.nodes}
        for j, n in enumerate(self.nodes):
            if n.id in [m.id for m in self.nodes[:j]]:
                raise ConfigProblem(("nodes", j, "id"), f"duplicate node ids: {n.id}")
        for i, s in enumerate(self.stores):
            if s.node is None:
                if s.id in nodes:
                    raise ConfigProblem(
                        ("stores", i, "id"),
                        f"store {s.id} names no node, so it is a group of its own, but a node "
                        f"is also called {s.id}: set `node: {s.id}` or rename the node",
                    )
                continue
            node = nodes.get(s.node)
            if node is None:
                known = ", ".join(sorted(nodes)) or "none declared under `nodes:`"
                raise ConfigProblem(
                    ("stores", i, "node"), f"store {s.id} names unknown node {s.node} ({known})"
                )
            _hosted_store_fits(i, s, node)
            s.embedder, s.embedder_options = node.embedder, dict(node.embedder_options)

    def _resolve_groups(self) -> None:
        """Declared groups first, then one per store without a node; ports laid out in turn."""
        declared = [
            (n, tuple(s.id for s in self.stores if s.node == n.id), n.urls, ("nodes", j))
            for j, n in enumerate(self.nodes)
        ]
        implied = [
            (s, (s.id,), s.shard_urls, ("stores", i))
            for i, s in enumerate(self.stores)
            if s.node is None
        ]
        entries: list[
            tuple[NodeConfig | StoreConfig, tuple[str, ...], list[str], tuple[str | int, ...]]
        ] = [*declared, *implied]
        groups: list[NodeGroup] = []
        for entry, stores, urls, loc in entries:
            first = (
                entry.port if entry.port is not None else self.cluster.shard_port + 10 * len(groups)
            )
            groups.append(
                NodeGroup(
                    id=entry.id,
                    replicas=entry.replicas,
                    ports=tuple(first + r for r in range(entry.replicas)),
                    embedder=entry.embedder,
                    embedder_options=dict(entry.embedder_options),
                    urls=tuple(urls),
                    stores=stores,
                    declared=loc[0] == "nodes",
                    loc=loc,
                )
            )
        upstreams: dict[str, str] = {}
        for g in groups:  # nginx names an upstream after its group, with _ for -
            other = upstreams.setdefault(upstream_name(g.id), g.id)
            if other != g.id:
                raise ConfigProblem(
                    (*g.loc, "id"), f"group ids {other} and {g.id} differ only in - and _"
                )
        self._groups = {g.id: g for g in groups}
        self._store_group = {sid: g.id for g in groups for sid in g.stores}

    def _check_ports(self) -> None:
        c = self.cluster
        used: dict[int, str] = {
            c.front_port: "the front door (cluster.front_port)",
            c.shard_proxy_port: "the shard proxy (cluster.shard_proxy_port)",
            c.redis_port: "Redis (cluster.redis_port)",
        }
        for r in range(1, 5):  # its replica, then three Sentinels (deploy/redis_ha.py)
            used.setdefault(
                c.redis_port + r, "Redis's replica or Sentinels (cluster.redis_port + 1..4)"
            )
        for r in range(c.gateway_replicas):
            used.setdefault(c.gateway_port + r, f"gateway replica {r + 1} (cluster.gateway_port)")
        for g in self._groups.values():
            if g.urls:  # replicas on other hosts: their ports are not ours to lay out
                continue
            what = f"node {g.id}" if g.declared else f"store {g.id}"
            for p in g.ports:
                if p in used:
                    raise ConfigProblem(
                        (*g.loc, "port"), f"port {p} of {what} is also used by {used[p]}"
                    )
                used[p] = what

    # --- lookups ---------------------------------------------------------------------------

    def store(self, store_id: str) -> StoreConfig | None:
        return next((s for s in self.stores if s.id == store_id), None)

    def compatible(self, home: StoreConfig) -> list[StoreConfig]:
        """The other stores whose faces `home`'s can be compared with: every store that may
        run the same embedder, whatever the fallback policy (the chain, for a search)."""
        return [
            s
            for s in self.stores
            if s.id != home.id
            and may_match(s.embedder, home.embedder, s.embedder_options, home.embedder_options)
        ]

    def retention_days(self, store_id: str) -> int | None:
        """Days a visitor registered at this store is kept unseen (None: kept)."""
        store = self.store(store_id)
        if store is not None and "visitor_retention_days" in store.model_fields_set:
            return store.visitor_retention_days
        return self.visitor_retention_days

    def groups(self) -> list[NodeGroup]:
        """Every node group: declared ones, then one per store that names no node."""
        return list(self._groups.values())

    def group(self, node_id: str) -> NodeGroup | None:
        return self._groups.get(node_id)

    def group_of(self, store_id: str) -> NodeGroup:
        """The node group hosting a store."""
        return self._groups[self._store_group[store_id]]

    def workers_per_replica(self) -> int:
        """Face-pipeline processes per shard replica when every replica this file runs
        locally (groups without `urls`) shares this host's cores."""
        local = sum(g.replicas for g in self._groups.values() if not g.urls)
        return max(1, (os.cpu_count() or 1) // max(1, local))

    def replica_ports(self, node_id: str) -> list[int]:
        """Ports of a node group's replicas (a store without `node:` is its own group)."""
        return list(self._groups[node_id].ports)

    def node_urls(self, node_id: str) -> list[str]:
        """Where the gateway reaches a node group: its explicit URLs, else nginx's upstream."""
        g = self._groups[node_id]
        if g.urls:
            return list(g.urls)
        c = self.cluster
        return [f"http://{c.host}:{c.shard_proxy_port}/{g.id}"]


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
            msg = err["msg"]
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, ConfigProblem):  # a cross-entry check: its own place, its words
                loc, msg = cause.loc, str(cause)
            line = _line_of(root, loc)
            path = ".".join(str(p) for p in loc) or "(file)"
            problems.append(f"{source}:{line or '?'}: {path}: {msg}")
        raise ConfigError("; ".join(problems)) from exc


def load_stores(path: str | Path) -> StoresFile:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from exc
    return parse_stores(text, str(p))


class WatchedStoresFile:
    """stores.yaml as last read; `check()` re-reads it when it changed, keeping the last good
    map when an edit is invalid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: StoresFile = load_stores(path)  # invalid at start-up: refuse to start
        self.last_error: str | None = None
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def check(self) -> bool:
        """Reload if the file changed; True when a new map was taken."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_stores(self.path)
        except ConfigError as exc:
            self.last_error = exc.message
            log.error("keeping the last good store map: %s", exc.message)
            return False
        added = {s.id for s in config.stores} - {s.id for s in self.config.stores}
        self.config, self.last_error = config, None
        log.info(
            "store map reloaded: %d stores%s",
            len(config.stores),
            f" (new: {', '.join(sorted(added))})" if added else "",
        )
        return True
