"""stores.yaml: typed, validated, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from storeface.errors import ConfigError
from storeface.stores import load_stores, parse_stores

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_is_valid_and_consistent() -> None:
    cfg = load_stores(ROOT / "config" / "stores.yaml")
    assert [s.id for s in cfg.stores] == ["store-a", "store-b", "store-c"]
    assert all(s.replicas == 2 for s in cfg.stores)
    assert cfg.replica_ports("store-a") == [9100, 9101]
    assert cfg.shard_urls("store-b") == ["http://127.0.0.1:8081/store-b"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("stores:\n  - id: a\n  - id: a\n", "duplicate store ids: a"),
        ("stores:\n  - id: a\n    fallback: sometimes\n", "stores.yaml:3: stores.0.fallback"),
        ("stores:\n  - id: a\n    threshold: -1\n", "stores.yaml:3: stores.0.threshold"),
        ("stores:\n  - id: a\n  - id: b\n    colour: red\n", "stores.yaml:4: stores.1.colour"),
        ("stores:\n  - id: Bad Id\n", "stores.yaml:2: stores.0.id"),
        ("stores: [\n", "not valid YAML"),
        ("- just a list\n", "expected a mapping"),
        (
            "stores:\n  - id: a\n    port: 9100\n    replicas: 2\n  - id: b\n    port: 9101\n",
            "port 9101 of store b is also used by a",
        ),
        ("stores:\n  - id: a\n    fallback: list\n    fallback_stores: [zz]\n", "unknown stores"),
    ],
)
def test_invalid_files_name_line_and_problem(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_stores(text, "stores.yaml")
    assert needle in err.value.message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_stores(tmp_path / "nope.yaml")
