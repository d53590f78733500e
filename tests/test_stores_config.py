"""stores.yaml: typed, validated, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from storeface.errors import ConfigError
from storeface.stores import load_stores, parse_stores

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_is_valid_and_consistent() -> None:
    cfg = load_stores(ROOT / "config" / "stores.yaml")
    assert [s.id for s in cfg.stores] == ["store-a", "store-b", "store-c", "store-d"]
    assert [(g.id, g.stores, g.replicas) for g in cfg.groups()] == [
        ("node-1", ("store-a", "store-b"), 2),
        ("node-2", ("store-c", "store-d"), 2),
    ]
    assert cfg.replica_ports("node-1") == [9100, 9101]
    assert cfg.group_of("store-b").id == "node-1"
    assert cfg.node_urls("node-2") == ["http://127.0.0.1:8081/node-2"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("stores:\n  - id: a\n  - id: a\n", "stores.yaml:3: stores.1.id: duplicate store ids: a"),
        ("stores:\n  - id: a\n    fallback: sometimes\n", "stores.yaml:3: stores.0.fallback"),
        ("stores:\n  - id: a\n    threshold: -1\n", "stores.yaml:3: stores.0.threshold"),
        ("stores:\n  - id: a\n  - id: b\n    colour: red\n", "stores.yaml:4: stores.1.colour"),
        ("stores:\n  - id: Bad Id\n", "stores.yaml:2: stores.0.id"),
        ("stores: [\n", "not valid YAML"),
        ("- just a list\n", "expected a mapping"),
        (
            "stores:\n  - id: a\n    port: 9100\n    replicas: 2\n  - id: b\n    port: 9101\n",
            "stores.yaml:6: stores.1.port: port 9101 of store b is also used by store a",
        ),
        (
            "stores:\n  - id: a\n    fallback: list\n    fallback_stores: [zz]\n",
            "stores.yaml:4: stores.0.fallback_stores: store a falls back to unknown stores",
        ),
    ],
)
def test_invalid_files_name_line_and_problem(text: str, needle: str) -> None:
    _refused(text, needle)


def _refused(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_stores(text, "stores.yaml")
    assert needle in err.value.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_stores(tmp_path / "nope.yaml")


NODES = "nodes:\n  - id: n1\n    port: 9200\n    embedder: arcface\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            NODES + "stores:\n  - id: a\n    node: n2\n",
            "stores.yaml:7: stores.0.node: store a names unknown node n2 (n1)",
        ),
        (
            NODES + "stores:\n  - id: a\n    node: n1\n    embedder: dlib\n",
            "stores.yaml:8: stores.0.embedder: store a uses embedder dlib but its node n1 runs "
            "arcface",
        ),
        (
            NODES + "stores:\n  - id: a\n    node: n1\n    replicas: 3\n",
            "stores.yaml:8: stores.0.replicas: store a is hosted by node n1: set replicas on the "
            "node",
        ),
        (
            NODES + "  - id: n1\nstores:\n  - id: a\n",
            "stores.yaml:5: nodes.1.id: duplicate node ids: n1",
        ),
        (
            NODES + "stores:\n  - id: b\n    port: 9201\n",
            "stores.yaml:7: stores.0.port: port 9201 of store b is also used by node n1",
        ),
        (
            "nodes:\n  - id: n1\n    port: 8080\nstores:\n  - id: a\n    node: n1\n",
            "stores.yaml:3: nodes.0.port: port 8080 of node n1 is also used by the front door",
        ),
        (
            NODES + "stores:\n  - id: n1\n",
            "stores.yaml:6: stores.0.id: store n1 names no node",
        ),
        (
            "nodes:\n  - id: n-1\n  - id: n_1\n    port: 9300\nstores:\n  - id: a\n",
            "stores.yaml:3: nodes.1.id: group ids n-1 and n_1 differ only in - and _",
        ),
    ],
)
def test_node_group_errors_name_line_and_problem(text: str, needle: str) -> None:
    _refused(text, needle)


def test_stores_share_a_node_group_and_old_files_keep_their_shape() -> None:
    cfg = parse_stores(
        NODES
        + "stores:\n  - id: a\n    node: n1\n  - id: b\n    node: n1\n"
        + "  - id: c\n    replicas: 1\n  - id: d\n",
        "stores.yaml",
    )
    groups = {g.id: g for g in cfg.groups()}
    assert groups["n1"].stores == ("a", "b") and groups["n1"].ports == (9200, 9201)
    # a store without node: is a group of its own, with the ports it had before node groups
    assert groups["c"].stores == ("c",) and groups["c"].ports == (9100 + 10,)
    assert groups["d"].ports == (9100 + 20, 9100 + 21)
    # a hosted store takes its node's embedder unless it says one (which must then match)
    assert cfg.store("a") is not None and cfg.store("a").embedder == "arcface"  # type: ignore[union-attr]
    # one that names none runs the default, decided by its node (tests/test_default_embedder.py)
    assert cfg.store("c") is not None and cfg.store("c").embedder == "auto"  # type: ignore[union-attr]
    assert cfg.node_urls("n1") == ["http://127.0.0.1:8081/n1"]
    assert cfg.group_of("b").id == "n1"


def test_a_file_without_nodes_lays_ports_out_as_before() -> None:
    cfg = parse_stores("stores:\n  - id: a\n  - id: b\n    port: 9300\n  - id: c\n")
    assert [g.ports for g in cfg.groups()] == [(9100, 9101), (9300, 9301), (9120, 9121)]
    assert [g.id for g in cfg.groups()] == ["a", "b", "c"]
