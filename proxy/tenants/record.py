"""A tenant's credential record: its fields, their accepted spellings, and how to show them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import InvalidTenantCredentials
from proxy.regions import resolve_region

# Each field's accepted spellings, preferred first: the old tenant service wrote camelCase.
FIELD_SPELLINGS: dict[str, tuple[str, ...]] = {
    "client_id": ("client_id", "clientId"),
    "client_secret": ("client_secret", "clientSecret"),
    "region": ("region",),
}
MASK = "****"


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    """One tenant's Genesys OAuth client; `region` is already resolved to a Genesys domain."""

    tenant: str
    client_id: str
    client_secret: str = field(repr=False)
    region: str

    def same_client(self, other: TenantCredentials) -> bool:
        """Whether `other` names the same OAuth client in the same region."""
        return (
            self.client_id == other.client_id
            and self.client_secret == other.client_secret
            and self.region == other.region
        )


def record_field(data: Mapping[str, Any], name: str) -> Any:
    """The value of field `name` under whichever accepted spelling is set, else None."""
    for key in FIELD_SPELLINGS[name]:
        value = data.get(key)
        if value not in (None, ""):
            return value
    return None


def parse_record(tenant: str, data: Mapping[str, Any]) -> TenantCredentials:
    """Validate a stored record; problems name the field, never a value (it may be the secret)."""
    values: dict[str, str] = {}
    for name, spellings in FIELD_SPELLINGS.items():
        key = next((key for key in spellings if data.get(key) not in (None, "")), None)
        if key is None:
            raise InvalidTenantCredentials(
                f"the credential record of tenant {tenant!r} has no {name}", tenant=tenant
            )
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            raise InvalidTenantCredentials(
                f"the credential record of tenant {tenant!r} has a {key} that is blank or "
                f"not a string",
                tenant=tenant,
            )
        values[name] = value.strip()
    try:
        region = resolve_region(values["region"])
    except ValueError as exc:
        raise InvalidTenantCredentials(
            f"the credential record of tenant {tenant!r} has a bad region: {exc}", tenant=tenant
        ) from exc
    return TenantCredentials(
        tenant=tenant,
        client_id=values["client_id"],
        client_secret=values["client_secret"],
        region=region,
    )


def mask_secret(secret: str, *, mask: str = MASK) -> str:
    """`****wxyz`: the last 4 characters, and only for a secret long enough to spare them."""
    return mask + secret[-4:] if len(secret) >= 12 else mask


def mask_client_id(client_id: str) -> str:
    """`abcd****wxyz`: enough to tell clients apart, not enough to use one."""
    if len(client_id) <= 8:
        return MASK
    return f"{client_id[:4]}{MASK}{client_id[-4:]}"
