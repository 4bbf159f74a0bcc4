"""The CLI's side of Vault: read, write, list and delete tenants' KV secrets.

The daemon only ever reads (`proxy.vault.session`); `genesys-token-proxy tenant ...` also
writes. Both go through one `VaultSession`, so logins, `vault.timeout` and the translation of
hvac's exceptions are the same, but the daemon's module carries none of the write paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import hvac.exceptions

from proxy.config import VaultConfig
from proxy.errors import TenantForbidden
from proxy.vault.session import VaultSession

T = TypeVar("T")


class VaultAdmin:
    """`async with VaultAdmin(config) as vault:` a session for one CLI command, closed after."""

    def __init__(self, config: VaultConfig) -> None:
        self._config = config
        self._session = VaultSession(config)

    def __repr__(self) -> str:
        return f"VaultAdmin({self._session!r})"

    async def __aenter__(self) -> VaultAdmin:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._session.close()

    async def read(self, path: str) -> dict[str, Any] | None:
        """The KV secret at `path`, or None if there is none (as the daemon reads it)."""
        return await self._session.read(path)

    async def write(self, path: str, data: Mapping[str, str]) -> None:
        """Create or replace the KV secret at `path` (all of its fields)."""
        kv, mount, secret = self._session.client.secrets.kv, self._config.kv_mount, dict(data)
        if self._config.kv_version == 2:

            def put() -> Any:
                return kv.v2.create_or_update_secret(path=path, secret=secret, mount_point=mount)
        else:

            def put() -> Any:
                return kv.v1.create_or_update_secret(path=path, secret=secret, mount_point=mount)

        await self._call("write", put, path, "writing")

    async def list_keys(self, path: str) -> list[str]:
        """The keys directly under `path` (folders end in `/`); empty if there are none."""
        kv, mount = self._session.client.secrets.kv, self._config.kv_mount
        version = kv.v2 if self._config.kv_version == 2 else kv.v1

        def keys() -> Any:
            return version.list_secrets(path=path, mount_point=mount)

        try:
            response = await self._call("list", keys, path, "listing")
        except hvac.exceptions.InvalidPath:
            return []
        data = response.get("data") if isinstance(response, dict) else None
        found = data.get("keys") if isinstance(data, dict) else None
        return [str(key) for key in found] if isinstance(found, list) else []

    async def delete(self, path: str) -> None:
        """Remove the KV secret at `path`; for KV v2 every version and its metadata."""
        kv, mount = self._session.client.secrets.kv, self._config.kv_mount
        if self._config.kv_version == 2:

            def remove() -> Any:
                return kv.v2.delete_metadata_and_all_versions(path=path, mount_point=mount)
        else:

            def remove() -> Any:
                return kv.v1.delete_secret(path=path, mount_point=mount)

        await self._call("delete", remove, path, "deleting")

    async def _call(self, operation: str, fn: Callable[[], T], path: str, doing: str) -> T:
        try:
            return await self._session.call(operation, fn)
        except hvac.exceptions.Forbidden as exc:
            raise TenantForbidden(
                f"Vault denies {doing} {self._config.kv_mount}/{path}; check the token's policy"
            ) from exc
