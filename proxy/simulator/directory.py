"""Deterministic data the simulated API serves: organizations, users and test blobs."""

import functools
import gzip
import re
import uuid
from typing import Any

from proxy.simulator.model import SimClient

USERS_PER_ORG = 7
BLOB_CHUNK_BYTES = 64 * 1024

_NAMESPACE = uuid.UUID("6f0b8c1e-3a52-4d7e-9a4b-2c1d5e8f7a90")
# Printable so a blob is easy to eyeball; each chunk starts with its index so that a proxy that
# drops, repeats or reorders chunks changes the bytes, not only the length.
_PATTERN = bytes(0x21 + i % 94 for i in range(BLOB_CHUNK_BYTES))


def org_id_for(domain: str, org_name: str) -> str:
    """The stable id of the organization `org_name` in region `domain`."""
    return str(uuid.uuid5(_NAMESPACE, f"{domain}/{org_name}"))


def slug(org_name: str) -> str:
    """The organization's short name, as Genesys shows it in `thirdPartyOrgName`."""
    return re.sub(r"[^a-z0-9]+", "-", org_name.lower()).strip("-") or "org"


def organization(client: SimClient) -> dict[str, Any]:
    """The body of `GET /api/v2/organizations/me`."""
    return {
        "id": client.org_id,
        "name": client.org_name,
        "defaultLanguage": "en",
        "defaultCountryCode": "US",
        "thirdPartyOrgName": slug(client.org_name),
        "domain": slug(client.org_name),
        "version": 1,
        "state": "active",
        "selfUri": "/api/v2/organizations/me",
    }


def users(client: SimClient) -> list[dict[str, Any]]:
    """The organization's users; names and emails contain the org name, to tell orgs apart."""
    short_name = slug(client.org_name)
    listing = []
    for number in range(1, USERS_PER_ORG + 1):
        user_id = str(uuid.uuid5(uuid.UUID(client.org_id), f"user-{number}"))
        email = f"user{number}@{short_name}.example.com"
        listing.append(
            {
                "id": user_id,
                "name": f"{client.org_name} User {number}",
                "email": email,
                "state": "active",
                "username": email,
                "version": 1,
                "selfUri": f"/api/v2/users/{user_id}",
            }
        )
    return listing


def user_page(client: SimClient, page_size: int, page_number: int) -> dict[str, Any]:
    """The body of `GET /api/v2/users`: a UserEntityListing page."""
    everyone = users(client)
    total = len(everyone)
    page_count = -(-total // page_size)
    start = (page_number - 1) * page_size

    def uri(number: int) -> str:
        return f"/api/v2/users?pageSize={page_size}&pageNumber={number}"

    page: dict[str, Any] = {
        "entities": everyone[start : start + page_size],
        "pageSize": page_size,
        "pageNumber": page_number,
        "total": total,
        "pageCount": page_count,
        "firstUri": uri(1),
        "selfUri": uri(page_number),
        "lastUri": uri(max(page_count, 1)),
    }
    if page_number < page_count:
        page["nextUri"] = uri(page_number + 1)
    if 1 < page_number <= page_count:
        page["previousUri"] = uri(page_number - 1)
    return page


def blob_chunk(index: int, size: int = BLOB_CHUNK_BYTES) -> bytes:
    """The first `size` bytes of chunk `index` of every blob."""
    return (index.to_bytes(8, "big") + _PATTERN[8:])[:size]


def blob_content(size: int) -> bytes:
    """The exact body of `GET /api/v2/sim/blob?bytes=<size>`, for tests to compare against."""
    full, rest = divmod(size, BLOB_CHUNK_BYTES)
    chunks = [blob_chunk(index) for index in range(full)]
    if rest:
        chunks.append(blob_chunk(full, rest))
    return b"".join(chunks)


@functools.lru_cache(maxsize=4)
def gzipped_blob(size: int) -> bytes:
    """The gzip-compressed blob of `size` bytes; `mtime=0` keeps it byte-for-byte stable."""
    return gzip.compress(blob_content(size), compresslevel=6, mtime=0)
