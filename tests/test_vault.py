"""VaultSession against a real OpenBao dev server: logins, KV reads, translation, readiness."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.config import VaultAuthConfig, VaultConfig
from proxy.errors import TenantForbidden, VaultUnavailable
from proxy.vault.session import VaultSession
from tests.conftest import OpenBao, create_vault_namespace, find_free_port

SessionFactory = Callable[..., VaultSession]


@pytest.fixture
async def make_session() -> AsyncIterator[SessionFactory]:
    """Build VaultSessions that are closed when the test ends."""
    sessions: list[VaultSession] = []

    def make(config: VaultConfig, **options: Any) -> VaultSession:
        session = VaultSession(config, **options)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        await session.close()


def token_config(openbao: OpenBao, token: str | None = None, **vault: Any) -> VaultConfig:
    return VaultConfig(
        address=openbao.address,
        auth=VaultAuthConfig(method="token", token=token or openbao.root_token),
        **vault,
    )


def create_token(openbao: OpenBao, policy: str, hcl: str) -> str:
    """A token whose only policies are `policy` (with the given rules) and default."""
    root = openbao.client()
    root.sys.create_or_update_policy(name=policy, policy=hcl)
    token: str = root.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"]
    return token


def read_policy(path: str) -> str:
    return f'path "{path}" {{ capabilities = ["read"] }}'


async def test_reads_a_kv2_secret(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory
) -> None:
    openbao.put_secret(f"genesys/tenants/{tenant_prefix}", {"client_id": "id", "x": "y"})
    session = make_session(token_config(openbao))
    await session.start()
    assert await session.read(f"genesys/tenants/{tenant_prefix}") == {"client_id": "id", "x": "y"}
    assert await session.read(f"genesys/tenants/{tenant_prefix}-missing") is None


async def test_reads_a_kv1_secret(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory
) -> None:
    mount = f"kv1-{tenant_prefix}"
    openbao.client().sys.enable_secrets_engine("kv", path=mount, options={"version": "1"})
    openbao.put_secret("genesys/tenants/acme", {"client_id": "id"}, mount=mount, kv_version=1)
    session = make_session(token_config(openbao, kv_mount=mount, kv_version=1))
    await session.start()
    assert await session.read("genesys/tenants/acme") == {"client_id": "id"}
    assert await session.read("genesys/tenants/nobody") is None


async def test_deleted_latest_version_reads_as_missing(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory
) -> None:
    path = f"genesys/tenants/{tenant_prefix}"
    openbao.put_secret(path, {"client_id": "id"})
    openbao.client().secrets.kv.v2.delete_latest_version_of_secret(path=path)
    session = make_session(token_config(openbao))
    assert await session.read(path) is None


async def test_policy_denied_read_is_tenant_forbidden(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory
) -> None:
    allowed = f"genesys/tenants/{tenant_prefix}-allowed"
    openbao.put_secret(allowed, {"client_id": "a"})
    openbao.put_secret(f"genesys/tenants/{tenant_prefix}-denied", {"client_id": "d"})
    token = create_token(openbao, tenant_prefix, read_policy(f"secret/data/{allowed}"))
    session = make_session(token_config(openbao, token=token))
    await session.start()

    assert await session.read(allowed) == {"client_id": "a"}
    with pytest.raises(TenantForbidden, match=f"secret/genesys/tenants/{tenant_prefix}-denied"):
        await session.read(f"genesys/tenants/{tenant_prefix}-denied")
    # A denial is the policy's doing: the session's token is still good, Vault is up.
    assert session.authenticated
    assert session.available


async def test_unreachable_vault_starts_not_ready_and_reads_fail_fast(
    make_session: SessionFactory,
) -> None:
    address = f"http://127.0.0.1:{find_free_port()}"
    config = VaultConfig(address=address, auth=VaultAuthConfig(token="any"))
    requests: list[tuple[str, str]] = []
    session = make_session(config, on_request=lambda *request: requests.append(request))
    await session.start()  # must not raise: the proxy starts and reports not ready
    assert not session.authenticated
    assert not session.available
    assert not session.worked
    assert session.last_error is not None
    assert address in session.last_error
    assert requests == [("login", "error")]
    # Vault is known to be down: the read is answered at once, without asking it again.
    with pytest.raises(VaultUnavailable) as caught:
        await session.read("genesys/tenants/acme")
    assert caught.value.status == 503
    assert caught.value.retry_after is not None
    assert address in caught.value.message
    assert requests == [("login", "error")]
    # The renewal loop's login attempts fail fast too, and the answer does not pile up.
    with pytest.raises(VaultUnavailable):
        await session.login()
    with pytest.raises(VaultUnavailable) as again:
        await session.read("genesys/tenants/acme")
    assert again.value.message.count("checked again") == 1
    assert requests == [("login", "error")]


async def test_token_file_replaced_by_a_new_token_is_picked_up(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory, tmp_path: Path
) -> None:
    first, second = f"genesys/tenants/{tenant_prefix}-1", f"genesys/tenants/{tenant_prefix}-2"
    openbao.put_secret(first, {"n": "1"})
    openbao.put_secret(second, {"n": "2"})
    old = create_token(openbao, f"{tenant_prefix}-old", read_policy(f"secret/data/{first}"))
    new = create_token(openbao, f"{tenant_prefix}-new", read_policy(f"secret/data/{second}"))
    token_file = tmp_path / "token"
    token_file.write_text(old + "\n")
    config = VaultConfig(
        address=openbao.address, auth=VaultAuthConfig(method="token", token_file=token_file)
    )
    session = make_session(config)
    await session.start()
    assert await session.read(first) == {"n": "1"}
    with pytest.raises(TenantForbidden):
        await session.read(second)

    # As a Vault Agent sink does it: write a new file, rename it over the old one. The old
    # token stays valid, so only noticing the change gets the read through.
    staged = tmp_path / "token.new"
    staged.write_text(new)
    staged.replace(token_file)
    assert await session.read(second) == {"n": "2"}


async def test_token_file_rewritten_in_place_after_revocation_is_reread(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory, tmp_path: Path
) -> None:
    path = f"genesys/tenants/{tenant_prefix}"
    openbao.put_secret(path, {"n": "1"})
    old = create_token(openbao, tenant_prefix, read_policy(f"secret/data/{path}"))
    new = openbao.client().auth.token.create(policies=[tenant_prefix])["auth"]["client_token"]
    token_file = tmp_path / "token"
    token_file.write_text(old)
    stat = token_file.stat()
    config = VaultConfig(
        address=openbao.address, auth=VaultAuthConfig(method="token", token_file=token_file)
    )
    session = make_session(config)
    await session.start()
    assert await session.read(path) == {"n": "1"}

    openbao.client().auth.token.revoke(old)
    # Same size, inode and mtime: the stat check cannot see it; the rejected token makes the
    # session re-read the file anyway.
    token_file.write_text(new)
    os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert await session.read(path) == {"n": "1"}


async def test_revoked_literal_token_makes_vault_unavailable_and_not_ready(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory
) -> None:
    path = f"genesys/tenants/{tenant_prefix}"
    openbao.put_secret(path, {"n": "1"})
    token = create_token(openbao, tenant_prefix, read_policy(f"secret/data/{path}"))
    session = make_session(token_config(openbao, token=token))
    await session.start()
    assert session.available

    openbao.client().auth.token.revoke(token)
    # Nothing in the config can produce a new token: that is an outage, not a tenant's denial.
    with pytest.raises(VaultUnavailable, match="rejects the configured token"):
        await session.read(path)
    assert not session.available
    assert not await session.probe()


async def test_missing_token_file_is_not_ready_until_it_appears(
    openbao: OpenBao, make_session: SessionFactory, tmp_path: Path
) -> None:
    token_file = tmp_path / "sink" / "token"
    config = VaultConfig(
        address=openbao.address, auth=VaultAuthConfig(method="token", token_file=token_file)
    )
    session = make_session(config)
    await session.start()
    assert not session.available
    assert session.last_error is not None
    assert "vault.auth.token_file" in session.last_error

    token_file.parent.mkdir()
    token_file.write_text(openbao.root_token)
    assert await session.probe()
    assert session.available


async def test_approle_login_and_login_again_after_the_token_is_revoked(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory, tmp_path: Path
) -> None:
    root = openbao.client()
    mount = f"approle-{tenant_prefix}"
    path = f"genesys/tenants/{tenant_prefix}"
    openbao.put_secret(path, {"n": "1"})
    root.sys.create_or_update_policy(name=tenant_prefix, policy=read_policy(f"secret/data/{path}"))
    root.sys.enable_auth_method("approle", path=mount)
    root.auth.approle.create_or_update_approle(
        "proxy", token_policies=[tenant_prefix], token_ttl="1h", mount_point=mount
    )
    role_id = root.auth.approle.read_role_id("proxy", mount_point=mount)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("proxy", mount_point=mount)["data"]
    secret_id_file = tmp_path / "secret-id"
    secret_id_file.write_text(secret_id["secret_id"])
    requests: list[tuple[str, str]] = []
    config = VaultConfig(
        address=openbao.address,
        auth=VaultAuthConfig(
            method="approle", role_id=role_id, secret_id_file=secret_id_file, mount=mount
        ),
    )
    session = make_session(config, on_request=lambda *request: requests.append(request))
    await session.start()
    assert session.authenticated
    assert session.token_info is not None
    assert session.token_info.ttl == 3600
    assert await session.read(path) == {"n": "1"}

    root.sys.revoke_prefix(f"auth/{mount}/login")
    assert await session.read(path) == {"n": "1"}
    assert requests.count(("login", "success")) == 2


async def test_approle_with_a_wrong_secret_id_is_not_ready(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory, tmp_path: Path
) -> None:
    mount = f"approle-{tenant_prefix}"
    root = openbao.client()
    root.sys.enable_auth_method("approle", path=mount)
    root.auth.approle.create_or_update_approle("proxy", mount_point=mount)
    role_id = root.auth.approle.read_role_id("proxy", mount_point=mount)["data"]["role_id"]
    secret_id_file = tmp_path / "secret-id"
    secret_id_file.write_text("not-the-secret-id")
    config = VaultConfig(
        address=openbao.address,
        auth=VaultAuthConfig(
            method="approle", role_id=role_id, secret_id_file=secret_id_file, mount=mount
        ),
    )
    session = make_session(config)
    await session.start()
    assert not session.available
    assert session.last_error is not None
    assert "refuses the approle login" in session.last_error
    assert "not-the-secret-id" not in session.last_error


async def test_namespace_is_honoured(
    openbao: OpenBao, tenant_prefix: str, make_session: SessionFactory
) -> None:
    inside = create_vault_namespace(openbao, tenant_prefix)
    inside.secrets.kv.v2.create_or_update_secret(path="genesys/tenants/acme", secret={"n": "ns"})
    session = make_session(token_config(openbao, namespace=tenant_prefix))
    assert await session.read("genesys/tenants/acme") == {"n": "ns"}


async def test_a_down_vault_is_probed_one_at_a_time_at_most_once_a_second(
    openbao: OpenBao, tmp_path: Path, make_session: SessionFactory
) -> None:
    # Vault "down" here is a token file that is missing: fast to fail, easy to fix.
    token_file = tmp_path / "token"
    config = VaultConfig(
        address=openbao.address, auth=VaultAuthConfig(method="token", token_file=token_file)
    )
    waits: list[float] = []
    asleep, resume = asyncio.Event(), asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        asleep.set()
        await resume.wait()
        resume.clear()

    async def next_wait() -> None:
        """Let the probe loop run until it waits again."""
        resume.set()
        await asleep.wait()
        asleep.clear()

    session = make_session(config, sleep=sleep)
    await session.start()
    assert not session.available
    assert session.probes == 1
    # Requests while down fail at once and start no probe of their own.
    for _ in range(20):
        with pytest.raises(VaultUnavailable):
            await session.read("genesys/tenants/acme")
    await asleep.wait()
    asleep.clear()
    assert waits == [1.0]
    assert session.probes == 1

    for probes in (2, 3, 4):
        await next_wait()
        assert session.probes == probes  # one probe per interval waited, never two at once
        assert not session.available
    assert waits == [1.0] * 4
    token_file.write_text(openbao.root_token)
    await next_wait()
    assert session.probes == 5
    assert session.available
    assert session.worked
    # Back: reads go to Vault again, and the loop has ended.
    assert await session.read("genesys/tenants/nobody-here") is None
    resume.set()
    await asyncio.sleep(0)
    assert session.probes == 5


async def test_closed_session_is_not_ready_and_does_not_read(
    openbao: OpenBao, make_session: SessionFactory
) -> None:
    session = make_session(token_config(openbao))
    await session.start()
    await session.close()
    assert not session.available
    with pytest.raises(VaultUnavailable, match="closed"):
        await session.read("genesys/tenants/acme")


async def test_repr_and_logs_never_show_the_token(
    openbao: OpenBao,
    tenant_prefix: str,
    make_session: SessionFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    token = create_token(openbao, tenant_prefix, read_policy("secret/data/nothing"))
    token_file = tmp_path / "token"
    token_file.write_text(token)
    config = VaultConfig(
        address=openbao.address, auth=VaultAuthConfig(method="token", token_file=token_file)
    )
    session = make_session(config)
    await session.start()
    openbao.client().auth.token.revoke(token)
    token_file.write_text("")
    with pytest.raises(VaultUnavailable):
        await session.read("genesys/tenants/acme")

    literal = make_session(token_config(openbao, token=token))
    assert repr(session) == f"VaultSession(address={openbao.address!r}, method='token')"
    assert token not in repr(literal)
    assert token not in caplog.text
    assert caplog.records  # the login and the token file's problems were logged
