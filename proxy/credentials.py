"""Tenants' Genesys OAuth clients: where they come from (Vault or a file) and how they are cached."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TenantCredentials:
    """One tenant's Genesys OAuth client; `region` is already resolved to a Genesys domain."""

    tenant: str
    client_id: str
    client_secret: str = field(repr=False)
    region: str
