"""What a tenant id may be: the one check the listener, the CLI and the Vault source share.

A tenant id ends up inside a Vault path (`genesys/tenants/{tenant}`) and a URL to Vault, so
besides `tenant.pattern` some characters are refused whatever the pattern allows: a configured
pattern may be loose (`.*`), and an id must still never name another tenant's secret.
"""

from __future__ import annotations

import re

from proxy.errors import InvalidTenant

# Path separators, and what would end or re-encode the path of the Vault URL: `a?x` would read
# tenant `a`'s secret, `%2e%2e` a parent directory once Vault decodes it.
_UNSAFE_CHARS = frozenset("/\\%?#")
_DOT_SEGMENTS = frozenset({".", ".."})
# Ids quoted in messages are cut to this many characters.
SHOWN_CHARS = 64


def check_tenant_id(tenant: str, pattern: re.Pattern[str] | None) -> str:
    """Return `tenant` if it is a usable tenant id, else raise InvalidTenant.

    `pattern` is `tenant.pattern`; None applies only the rules no pattern can loosen.
    """
    if pattern is not None and not pattern.fullmatch(tenant):
        raise InvalidTenant(f"tenant id {shown_tenant(tenant)} does not match the tenant pattern")
    if not is_path_safe(tenant):
        raise InvalidTenant(f"tenant id {shown_tenant(tenant)} cannot name a Vault secret")
    return tenant


def is_path_safe(tenant: str) -> bool:
    """Whether `tenant` is one plain path segment: no separators, dot-segments or controls."""
    return (
        bool(tenant)
        and tenant not in _DOT_SEGMENTS
        and tenant.isprintable()
        and _UNSAFE_CHARS.isdisjoint(tenant)
    )


def shown_tenant(tenant: str) -> str:
    """The id quoted for a message or log line: one line, bounded, whatever the client sent."""
    if len(tenant) > SHOWN_CHARS:
        return repr(tenant[:SHOWN_CHARS]) + "..."
    return repr(tenant)
