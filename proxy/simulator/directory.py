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


def created_user_id(org_id: str, email: str) -> str:
    """The id `POST /api/v2/users` gives a user: stable, so the demo can print it in advance."""
    return str(uuid.uuid5(uuid.UUID(org_id), f"created-{email.lower()}"))


class UserStore:
    """Each organization's users: the generated ones, then whatever the API's writes made of them.

    Writes (`POST /api/v2/users`, `PATCH` and `DELETE /api/v2/users/{id}`) change only the org
    of the token that made them, so tenants stay apart here as they do at Genesys.
    """

    def __init__(self) -> None:
        self._orgs: dict[str, dict[str, dict[str, Any]]] = {}

    def users(self, client: SimClient) -> list[dict[str, Any]]:
        return list(self._org(client).values())

    def get(self, client: SimClient, user_id: str) -> dict[str, Any] | None:
        return self._org(client).get(user_id)

    def create(self, client: SimClient, name: str, email: str) -> dict[str, Any] | None:
        """The new user, or None when the email is taken in the org."""
        org = self._org(client)
        if any(user["email"].lower() == email.lower() for user in org.values()):
            return None
        user_id = created_user_id(client.org_id, email)
        org[user_id] = {
            "id": user_id,
            "name": name,
            "email": email,
            "state": "active",
            "username": email,
            "version": 1,
            "selfUri": f"/api/v2/users/{user_id}",
        }
        return org[user_id]

    def update(self, client: SimClient, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply `changes` (already checked) to an existing user and bump its version."""
        user = self._org(client)[user_id]
        user.update(changes)
        user["version"] += 1
        return user

    def delete(self, client: SimClient, user_id: str) -> bool:
        return self._org(client).pop(user_id, None) is not None

    def _org(self, client: SimClient) -> dict[str, dict[str, Any]]:
        if client.org_id not in self._orgs:
            self._orgs[client.org_id] = {user["id"]: user for user in users(client)}
        return self._orgs[client.org_id]


def user_page(
    client: SimClient,
    page_size: int,
    page_number: int,
    everyone: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The body of `GET /api/v2/users`: a UserEntityListing page (of `everyone`, if given)."""
    everyone = users(client) if everyone is None else everyone
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
