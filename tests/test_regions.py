"""The Genesys Cloud region table and the hints for values that are not in it."""

from __future__ import annotations

import pytest

from proxy.regions import DOMAINS, REGION_NAMES, REGIONS, region_name, resolve_region

TABLE = [
    ("us-east-1", "mypurecloud.com"),
    ("us-east-2", "use2.us-gov-pure.cloud"),
    ("us-west-2", "usw2.pure.cloud"),
    ("ca-central-1", "cac1.pure.cloud"),
    ("sa-east-1", "sae1.pure.cloud"),
    ("mx-central-1", "mxc1.pure.cloud"),
    ("eu-west-1", "mypurecloud.ie"),
    ("eu-west-2", "euw2.pure.cloud"),
    ("eu-central-1", "mypurecloud.de"),
    ("eu-central-2", "euc2.pure.cloud"),
    ("me-central-1", "mec1.pure.cloud"),
    ("ap-south-1", "aps1.pure.cloud"),
    ("ap-southeast-1", "apse1.pure.cloud"),
    ("ap-southeast-2", "mypurecloud.com.au"),
    ("ap-northeast-1", "mypurecloud.jp"),
    ("ap-northeast-2", "apne2.pure.cloud"),
    ("ap-northeast-3", "apne3.pure.cloud"),
    ("eusc-de-east-1", "edee1.eusc-pure.cloud"),
]


def test_table_matches_the_official_list() -> None:
    assert dict(REGIONS) == dict(TABLE)
    assert {domain: name for name, domain in TABLE} == dict(DOMAINS)
    assert tuple(name for name, _ in TABLE) == REGION_NAMES


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        REGIONS["xx-nowhere-1"] = "example.com"  # type: ignore[index]


@pytest.mark.parametrize(("name", "domain"), TABLE)
def test_aws_name_resolves_to_its_domain(name: str, domain: str) -> None:
    assert resolve_region(name) == domain


@pytest.mark.parametrize(("name", "domain"), TABLE)
def test_domain_resolves_to_itself(name: str, domain: str) -> None:
    assert resolve_region(domain) == domain
    assert region_name(domain) == name


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        ("US-EAST-1", "mypurecloud.com"),
        ("  ap-south-1\n", "aps1.pure.cloud"),
        ("MyPureCloud.IE", "mypurecloud.ie"),
        ("\tAPS1.Pure.Cloud ", "aps1.pure.cloud"),
    ],
)
def test_case_and_surrounding_whitespace_do_not_matter(value: str, domain: str) -> None:
    assert resolve_region(value) == domain


def test_short_label_on_a_legacy_suffix_hints_at_the_real_domain() -> None:
    with pytest.raises(ValueError, match="is not a Genesys Cloud region") as caught:
        resolve_region("aps1.mypurecloud.com")
    message = str(caught.value)
    assert message.endswith("did you mean aps1.pure.cloud (ap-south-1)?")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("api.mypurecloud.de", "mypurecloud.de (eu-central-1)"),
        ("login.usw2.pure.cloud", "usw2.pure.cloud (us-west-2)"),
        ("https://api.mypurecloud.com.au/api/v2/users", "mypurecloud.com.au (ap-southeast-2)"),
        ("https://login.mypurecloud.jp/", "mypurecloud.jp (ap-northeast-1)"),
        ("mypurecloud.ie.", "mypurecloud.ie (eu-west-1)"),
        ("usw2.mypurecloud.com", "usw2.pure.cloud (us-west-2)"),
        ("aps1", "aps1.pure.cloud (ap-south-1)"),
        ("us-east1", "us-east-1 (mypurecloud.com)"),
        ("us_east_1", "us-east-1 (mypurecloud.com)"),
        ("eu-centrla-1", "eu-central-1 (mypurecloud.de)"),
        ("mypurecloud.con", "mypurecloud.com (us-east-1)"),
        ("ca-central", "ca-central-1 (cac1.pure.cloud)"),
    ],
)
def test_near_misses_get_a_hint(value: str, hint: str) -> None:
    with pytest.raises(ValueError, match="is not a Genesys Cloud region") as caught:
        resolve_region(value)
    assert str(caught.value).endswith(f"did you mean {hint}?")


@pytest.mark.parametrize("value", ["eu-west-3", "us-west-1", "ap-southeast-3", "us-gov-west-1"])
def test_aws_regions_without_genesys_get_no_misleading_hint(value: str) -> None:
    # The nearest name in the table would be another country (eu-west-3 is Paris, eu-west-2 London).
    with pytest.raises(ValueError, match="has no Genesys Cloud region") as caught:
        resolve_region(value)
    message = str(caught.value)
    assert "did you mean" not in message
    assert "us-east-1" in message


@pytest.mark.parametrize("value", ["mumbai", "mypurecloud.co.uk", "example.com", "1234"])
def test_unknown_values_list_the_choices(value: str) -> None:
    with pytest.raises(ValueError, match="is not a Genesys Cloud region") as caught:
        resolve_region(value)
    message = str(caught.value)
    assert "did you mean" not in message
    assert all(name in message for name in REGION_NAMES)


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_value_is_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        resolve_region(value)


def test_region_name_of_an_unknown_domain_is_none() -> None:
    assert region_name("example.com") is None
