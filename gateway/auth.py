"""API keys: an admin key, and camera keys scoped to their stores."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from storeface.errors import ConfigError, Forbidden, Unauthorized

log = logging.getLogger("gateway.auth")


@dataclass
class KeyRing:
    """Who may do what; keys are compared in constant time."""

    admin: str | None = None
    cameras: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_sources(
        cls, admin: str | None, cameras: str | None, keys_file: Path | None
    ) -> KeyRing:
        ring = cls(admin=admin or None)
        if cameras:
            for part in cameras.split(";"):
                if not part.strip():
                    continue
                key, _, stores = part.partition("=")
                if not key.strip() or not stores.strip():
                    raise ConfigError("STOREFACE_CAMERA_KEYS: expected key=store-a,store-b;...")
                ring.cameras[key.strip()] = frozenset(s.strip() for s in stores.split(","))
        if keys_file is not None:
            try:
                doc = yaml.safe_load(keys_file.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"cannot read keys file {keys_file}: {exc}") from exc
            ring.admin = ring.admin or doc.get("admin_key")
            for key, stores in (doc.get("camera_keys") or {}).items():
                ring.cameras[str(key)] = frozenset(stores)
        if not ring.admin and not ring.cameras:
            log.warning("no API keys configured: every request will be refused (401)")
        return ring

    def is_admin(self, key: str | None) -> bool:
        return bool(key and self.admin and hmac.compare_digest(key, self.admin))

    def _camera_stores(self, key: str) -> frozenset[str] | None:
        for known, stores in self.cameras.items():
            if hmac.compare_digest(key, known):
                return stores
        return None

    def require_admin(self, key: str | None) -> None:
        if self.is_admin(key):
            return
        if not key or self._camera_stores(key) is None:
            raise Unauthorized()
        raise Forbidden("this action needs the admin key")

    def require_store(self, key: str | None, store_id: str) -> None:
        """Admin may use any store; a camera key only its own."""
        if self.is_admin(key):
            return
        stores = self._camera_stores(key) if key else None
        if stores is None:
            raise Unauthorized()
        if store_id not in stores:
            raise Forbidden(f"this key may not act for store {store_id}", store_id=store_id)

    def require_any(self, key: str | None) -> None:
        if self.is_admin(key) or (key and self._camera_stores(key) is not None):
            return
        raise Unauthorized()

    def scope(self, key: str | None) -> frozenset[str] | None:
        """The stores a valid key may see: None for the admin key (every store)."""
        self.require_any(key)
        return None if self.is_admin(key) else self._camera_stores(key or "")

    def key_id(self, key: str | None) -> str:
        """What logs and the audit trail name a key by: never the key itself."""
        if self.is_admin(key):
            return "admin"
        digest = hashlib.sha256((key or "").encode()).hexdigest()[:10]
        return f"camera-{digest}"
