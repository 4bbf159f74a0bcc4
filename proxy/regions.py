"""The official Genesys Cloud region table, and turning what operators type into a domain."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from types import MappingProxyType

# AWS region name -> Genesys Cloud domain, as Genesys publishes it.
REGIONS: Mapping[str, str] = MappingProxyType(
    {
        "us-east-1": "mypurecloud.com",
        "us-east-2": "use2.us-gov-pure.cloud",
        "us-west-2": "usw2.pure.cloud",
        "ca-central-1": "cac1.pure.cloud",
        "sa-east-1": "sae1.pure.cloud",
        "mx-central-1": "mxc1.pure.cloud",
        "eu-west-1": "mypurecloud.ie",
        "eu-west-2": "euw2.pure.cloud",
        "eu-central-1": "mypurecloud.de",
        "eu-central-2": "euc2.pure.cloud",
        "me-central-1": "mec1.pure.cloud",
        "ap-south-1": "aps1.pure.cloud",
        "ap-southeast-1": "apse1.pure.cloud",
        "ap-southeast-2": "mypurecloud.com.au",
        "ap-northeast-1": "mypurecloud.jp",
        "ap-northeast-2": "apne2.pure.cloud",
        "ap-northeast-3": "apne3.pure.cloud",
        "eusc-de-east-1": "edee1.eusc-pure.cloud",
    }
)

# Genesys Cloud domain -> AWS region name.
DOMAINS: Mapping[str, str] = MappingProxyType({domain: name for name, domain in REGIONS.items()})

REGION_NAMES: tuple[str, ...] = tuple(REGIONS)

# Host prefixes pasted in from URLs people have seen (api.mypurecloud.com, login.mypurecloud.de).
_HOST_PREFIXES = ("api.", "login.", "apps.", "www.")

# The short location label of the newer domains (aps1 in aps1.pure.cloud), unique per region.
_SHORT_LABELS: Mapping[str, str] = MappingProxyType(
    {domain.split(".", 1)[0]: domain for domain in DOMAINS if not domain.startswith("mypurecloud.")}
)

# AWS names with the separators dropped or changed (us_east_1, useast1) -> the real name.
_SQUASHED_NAMES: Mapping[str, str] = MappingProxyType(
    {re.sub(r"[^a-z0-9]", "", name): name for name in REGIONS}
)

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")
# A well-formed AWS region name (eu-west-3, us-gov-west-1): if it is not in the table, it is a real
# region Genesys does not run in, and the nearest name in the table would be another country.
_AWS_NAME = re.compile(
    r"^[a-z]{2,4}(-[a-z]{2,3})?-(north|south|east|west|central)(east|west)?-[0-9]$"
)
_MAX_TYPO_EDITS = 2  # characters inserted or deleted


def resolve_region(value: str) -> str:
    """Return the Genesys Cloud domain for a domain or an AWS region name; ValueError otherwise."""
    cleaned = value.strip().lower()
    domain = _lookup(cleaned)
    if domain is not None:
        return domain
    if not cleaned:
        raise ValueError("an empty value is not a Genesys Cloud region")
    shown = repr(value.strip())
    names = ", ".join(REGION_NAMES)
    hint = _suggest(cleaned)
    if hint is not None:
        raise ValueError(f"{shown} is not a Genesys Cloud region; did you mean {hint}?")
    if _AWS_NAME.match(cleaned):
        raise ValueError(f"{shown} has no Genesys Cloud region; use one of {names}")
    raise ValueError(
        f"{shown} is not a Genesys Cloud region; use a Genesys Cloud domain such as "
        f"mypurecloud.com or one of the AWS region names {names}"
    )


def region_name(domain: str) -> str | None:
    """Return the AWS region name of a Genesys Cloud domain, or None if it is not one."""
    return DOMAINS.get(domain.strip().lower())


def _lookup(value: str) -> str | None:
    if value in DOMAINS:
        return value
    return REGIONS.get(value)


def _suggest(value: str) -> str | None:
    """Return "name (counterpart)" for the region `value` most likely means, if any."""
    host = _host_part(value)
    if _lookup(host) is not None:
        return _describe(host)
    # A right location label on a wrong suffix (aps1.mypurecloud.com) means that location.
    label = host.split(".", 1)[0]
    if label in _SHORT_LABELS:
        return _describe(_SHORT_LABELS[label])
    squashed = re.sub(r"[^a-z0-9]", "", host)
    if squashed in _SQUASHED_NAMES:
        return _describe(_SQUASHED_NAMES[squashed])
    if _AWS_NAME.match(host):
        return None
    close = _close_spelling(host)
    return _describe(close) if close else None


def _close_spelling(value: str) -> str | None:
    """Return the name `value` is a typo of: a looser match would point to another country."""
    best: tuple[float, str] | None = None
    for name in (*REGIONS, *DOMAINS):
        # eu-wst-3 means Paris, not London (eu-west-2).
        if re.search(r"-[0-9]$", value) and name in REGIONS and value[-1] != name[-1]:
            continue
        matcher = difflib.SequenceMatcher(None, value, name)
        matched = sum(block.size for block in matcher.get_matching_blocks())
        if len(value) + len(name) - 2 * matched > _MAX_TYPO_EDITS:
            continue
        if best is None or matcher.ratio() > best[0]:
            best = (matcher.ratio(), name)
    return best[1] if best else None


def _host_part(value: str) -> str:
    """Strip what surrounds a domain when a URL or a service host name is pasted in."""
    host = _SCHEME.sub("", value)
    host = host.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    host = host.split(":", 1)[0].rstrip(".")
    for prefix in _HOST_PREFIXES:
        if host.startswith(prefix) and host[len(prefix) :]:
            return host[len(prefix) :]
    return host


def _describe(name: str) -> str:
    if name in DOMAINS:
        return f"{name} ({DOMAINS[name]})"
    return f"{name} ({REGIONS[name]})"
