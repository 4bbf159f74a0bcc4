"""Property-based tests (hypothesis): tenant ids, header filtering, regions, config loading.

The example count comes from the settings profile registered in conftest (bounded in CI).
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.config import DEFAULT_TENANT_PATTERN, Config, load_config, parse_config
from proxy.errors import ConfigError, InvalidTenant, MissingTenant, ProxyError
from proxy.http.forward import HOP_BY_HOP, Forwarder, ForwardSettings, TenantResolver
from proxy.regions import DOMAINS, REGIONS, resolve_region
from proxy.tenants.ids import check_tenant_id
from proxy.tenants.tokens import Token

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


def outcome(call: Callable[[], T], expected: type[E]) -> T | E:
    """The call's result, or the `expected` exception it raised (any other propagates)."""
    try:
        return call()
    except expected as exc:
        return exc


# -- tenant ids ----------------------------------------------------------------------------------

DEFAULT_RESOLVER = TenantResolver(parse_config({}))
# A deliberately loose pattern: the resolver's own guards must still keep ids out of Vault paths.
LOOSE_RESOLVER = TenantResolver(parse_config({"tenant": {"pattern": "(?s).*"}}))

tenant_like = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=string.ascii_letters + string.digits + "._-/\\%{}?#", max_size=80),
    st.sampled_from([".", "..", "../x", "a/b", "a\\b", "{tenant}", "%2e%2e", "a\nb"]),
)


@given(tenant_like)
def test_a_tenant_id_is_accepted_unchanged_or_refused_with_one_safe_line(tenant: str) -> None:
    result = outcome(lambda: DEFAULT_RESOLVER.check(tenant), InvalidTenant)
    if isinstance(result, InvalidTenant):
        assert not re.fullmatch(DEFAULT_TENANT_PATTERN, tenant) or "/" in tenant
        # Quoted in logs and bodies: one line, bounded, whatever the client sent.
        assert "\n" not in result.message
        assert "\r" not in result.message
        assert len(result.message) < 300
    else:
        assert result == tenant
        assert re.fullmatch(DEFAULT_TENANT_PATTERN, tenant)


@given(st.from_regex(DEFAULT_TENANT_PATTERN, fullmatch=True))
def test_every_id_the_default_pattern_allows_is_accepted(tenant: str) -> None:
    assert DEFAULT_RESOLVER.check(tenant) == tenant


@given(tenant_like)
def test_even_a_loose_pattern_never_lets_an_id_walk_the_vault_path(tenant: str) -> None:
    result = outcome(lambda: LOOSE_RESOLVER.check(tenant), InvalidTenant)
    unsafe = set("/\\%?#") & set(tenant) or tenant in ("", ".", "..") or not tenant.isprintable()
    if isinstance(result, InvalidTenant):
        assert unsafe
    else:
        assert not unsafe
        assert result == tenant


@given(tenant_like)
def test_the_cli_the_listener_and_the_vault_source_share_one_tenant_id_check(tenant: str) -> None:
    # The Vault source checks without a pattern: it refuses exactly the unsafe ids that even a
    # loose pattern lets through, so the three callers cannot drift apart.
    loose = outcome(lambda: LOOSE_RESOLVER.check(tenant), InvalidTenant)
    bare = outcome(lambda: check_tenant_id(tenant, None), InvalidTenant)
    assert isinstance(loose, InvalidTenant) == isinstance(bare, InvalidTenant)


# -- header filtering ----------------------------------------------------------------------------

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
SPECIAL_NAMES = sorted(HOP_BY_HOP | {"host", "authorization", "x-tenant-id"})
header_names = st.one_of(
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20),
    st.sampled_from(SPECIAL_NAMES).flatmap(
        lambda name: st.sampled_from([name, name.upper(), name.title()])
    ),
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
).map(str.strip)
FORWARDER = Forwarder(
    ForwardSettings.from_config(parse_config({})),
    DEFAULT_RESOLVER,
    cast(Any, None),  # the header filter uses neither the token manager ...
    cast(Any, None),  # ... nor the HTTP session
)
TOKEN = Token("opaque-token-value", "acme", "mypurecloud.ie", 300.0, 0.0, 0.0)


@given(
    st.lists(st.tuples(header_names, header_values), max_size=25),
    st.lists(header_names, max_size=4),
)
def test_upstream_headers_drop_hop_by_hop_and_tenant_and_inject_one_bearer(
    pairs: list[tuple[str, str]], connection_names: list[str]
) -> None:
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    if connection_names:
        headers["Connection"] = ", ".join(connection_names)
    request = make_mocked_request("GET", "/api/v2/users", headers=headers)

    upstream = FORWARDER._upstream_headers(request, TOKEN)

    named = {name.lower() for name in connection_names}
    dropped = set(HOP_BY_HOP) | {"host", "authorization", "x-tenant-id"} | named
    assert upstream.getall("Authorization") == ["Bearer opaque-token-value"]
    for name in upstream:
        assert name.lower() not in dropped - {"authorization"}
    # Everything else passes, every value, in order.
    expected = [(k.lower(), v) for k, v in headers.items() if k.lower() not in dropped]
    passed = [(k.lower(), v) for k, v in upstream.items() if k.lower() != "authorization"]
    assert passed == expected


# -- regions -------------------------------------------------------------------------------------


@given(st.sampled_from(sorted(REGIONS.items())), st.sampled_from(["", " ", "\t"]), st.booleans())
def test_every_region_name_and_domain_resolves_whatever_its_case_and_spacing(
    pair: tuple[str, str], pad: str, upper: bool
) -> None:
    name, domain = pair
    for value in (name, domain):
        typed = pad + (value.upper() if upper else value) + pad
        assert resolve_region(typed) == domain


@given(
    st.one_of(st.text(max_size=60), st.from_regex(r"[a-z]{2,4}-[a-z]{4,9}-[0-9]", fullmatch=True))
)
def test_anything_else_is_refused_with_one_line_or_resolves_to_a_table_domain(value: str) -> None:
    result = outcome(lambda: resolve_region(value), ValueError)
    if isinstance(result, ValueError):
        assert str(result)
        assert "\n" not in str(result)
    else:
        assert result in DOMAINS
        assert resolve_region(result) == result  # idempotent


# -- config loading ------------------------------------------------------------------------------


def _known_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """The key tree of the config dataclasses: {section: {key: None | subtree}}."""
    tree: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        kind = item.default.__class__ if dataclasses.is_dataclass(item.default) else None
        tree[item.name] = _known_keys(kind) if kind is not None else None
    return tree


KEY_TREE = _known_keys(Config)


def _paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for key, sub in tree.items():
        path = f"{prefix}{key}"
        found.add(path)
        if sub is not None:
            found |= _paths(sub, path + ".")
    return found


KNOWN_KEYS = _paths(KEY_TREE)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["http://127.0.0.1:8200", "https://api.{domain}", "{tenant}", "vault"]),
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def documents(tree: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings shaped like the config: mostly known keys with random values, some strangers."""
    known = {
        key: (documents(sub) if sub is not None else anything) | anything
        for key, sub in tree.items()
    }
    return st.fixed_dictionaries({}, optional=known).flatmap(
        lambda doc: st.dictionaries(st.text(max_size=8), anything, max_size=1).map(
            lambda extra: {**extra, **doc}
        )
    )


@given(documents(KEY_TREE))
def test_any_document_loads_or_is_refused_with_a_config_error_naming_a_key(data: Any) -> None:
    result = outcome(lambda: parse_config(data), ConfigError)
    if isinstance(result, ConfigError):
        assert "\n" not in str(result)
        # A known key with a bad value, or a key the config does not have.
        assert (result.key in KNOWN_KEYS) is (result.message != "unknown key")
    else:
        assert isinstance(result, Config)


@given(
    st.integers(min_value=0, max_value=65535),
    st.floats(min_value=0, max_value=1e9),
    st.floats(min_value=0.05, max_value=0.95),
)
def test_valid_values_arrive_in_the_config_unchanged(port: int, ttl: float, refresh: float) -> None:
    config = parse_config(
        {
            "listen": {"port": port},
            "credentials": {"ttl": ttl, "stale_ttl": ttl},
            "genesys": {"refresh_at": refresh},
        }
    )
    assert config.listen.port == port
    assert config.credentials.ttl == ttl == config.credentials.stale_ttl
    assert config.genesys.refresh_at == refresh


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_any_file_text_loads_or_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(text, encoding="utf-8")
    result = outcome(lambda: load_config(path), ConfigError)
    if isinstance(result, ConfigError):
        assert "\n" not in str(result)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_numbers_that_are_not_finite_are_refused(value: float) -> None:
    # Found by the property test above: NaN slipped past every range check.
    with pytest.raises(ConfigError, match="finite") as caught:
        parse_config({"credentials": {"ttl": value}})
    assert caught.value.key == "credentials.ttl"


# -- the tenant header: exactly one, non-empty ----------------------------------------------------

WITH_DEFAULT = TenantResolver(parse_config({"tenant": {"default": "fallback"}}))
tenant_header_lines = st.lists(
    st.tuples(
        st.sampled_from(["X-Tenant-ID", "x-tenant-id", "X-TENANT-ID", "x-Tenant-Id"]),
        st.one_of(st.just(""), st.just("acme"), st.just("fallback"), tenant_like.map(str.strip)),
    ),
    max_size=4,
)


@given(tenant_header_lines, st.sampled_from([DEFAULT_RESOLVER, WITH_DEFAULT]))
def test_a_request_names_exactly_one_tenant_or_is_refused(
    lines: list[tuple[str, str]], resolver: TenantResolver
) -> None:
    headers: CIMultiDict[str] = CIMultiDict(lines)
    request = make_mocked_request("GET", "/api/v2/users", headers=headers)
    result = outcome(lambda: resolver(request), ProxyError)
    if len(lines) > 1 or (lines and lines[0][1] == ""):
        # Never the default, never the first or the last of several.
        assert isinstance(result, InvalidTenant), result
    elif lines:
        expected = outcome(lambda: resolver.check(lines[0][1]), InvalidTenant)
        if isinstance(expected, InvalidTenant):
            assert isinstance(result, InvalidTenant), result
        else:
            assert result == lines[0][1]
    elif resolver.default is not None:
        assert result == resolver.default
    else:
        assert isinstance(result, MissingTenant), result


@given(tenant_header_lines, st.one_of(st.none(), st.just("from-basic")))
def test_the_basic_username_stands_in_only_when_no_tenant_header_is_sent(
    lines: list[tuple[str, str]], fallback: str | None
) -> None:
    request = make_mocked_request("POST", "/oauth/token", headers=CIMultiDict(lines))
    result = outcome(lambda: WITH_DEFAULT(request, fallback=fallback), ProxyError)
    if not lines:
        assert result == (fallback or "fallback")
    else:
        assert result != fallback or lines[0][1] == fallback
