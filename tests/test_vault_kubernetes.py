"""Kubernetes auth for real: OpenBao's kubernetes auth method reviews the proxy's service-account
JWT with a stand-in of the cluster's TokenReview API (the only stand-in: it plays the cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hvac

from tests.conftest import OpenBao, ProxyHarness
from tests.kubernetes_standin import KubernetesStandIn, ServiceAccount
from tests.test_vault_renewal import read_policy, vault_session

PROXY_ACCOUNT = ServiceAccount("team-a", "genesys-proxy")


def kubernetes_role(
    client: hvac.Client, mount: str, *, policies: list[str], namespaces: list[str]
) -> None:
    client.write_data(
        f"auth/{mount}/role/genesys-proxy",
        data={
            "bound_service_account_names": [PROXY_ACCOUNT.name],
            "bound_service_account_namespaces": namespaces,
            "token_policies": policies,
            "token_ttl": "1h",
        },
    )


def kubernetes_auth(jwt_file: Path, mount: str | None) -> dict[str, Any]:
    return {
        "method": "kubernetes",
        "role": "genesys-proxy",
        "jwt_file": str(jwt_file),
        "mount": mount,
    }


async def test_kubernetes_login_with_a_service_account_jwt_serves_a_tenant(
    harness: ProxyHarness,
    openbao: OpenBao,
    kubernetes_cluster: KubernetesStandIn,
    tmp_path: Path,
) -> None:
    acme = harness.add_tenant("acme")
    root = openbao.client()
    mount = f"k8s-{harness.prefix}".rstrip("-")
    kubernetes_cluster.configure_auth(root, mount)
    root.sys.create_or_update_policy(name=acme.id, policy=read_policy(acme.id))
    kubernetes_role(root, mount, policies=[acme.id], namespaces=[PROXY_ACCOUNT.namespace])
    jwt_file = tmp_path / "token"
    jwt_file.write_text(kubernetes_cluster.issue_jwt(PROXY_ACCOUNT))

    await harness.start({"vault": {"auth": kubernetes_auth(jwt_file, mount)}})
    response = await harness.client.get("/api/v2/sim/echo", headers={"X-Tenant-ID": acme.id})
    assert response.status == 200
    assert (await response.json())["client_id"] == acme.client_id
    assert kubernetes_cluster.reviews >= 1  # OpenBao asked the cluster about the JWT
    assert (await harness.admin.get("/readyz")).status == 200

    # OpenBao issued the token to the pod's service account, through this role.
    session = vault_session(harness)
    assert session.token_info is not None
    token = root.auth.token.lookup_accessor(session.token_info.accessor)["data"]
    assert token["meta"]["service_account_namespace"] == PROXY_ACCOUNT.namespace
    assert token["meta"]["role"] == "genesys-proxy"
    assert token["path"] == f"auth/{mount}/login"


async def test_kubernetes_login_is_refused_for_a_namespace_the_role_does_not_bind(
    harness: ProxyHarness,
    openbao: OpenBao,
    kubernetes_cluster: KubernetesStandIn,
    tmp_path: Path,
) -> None:
    acme = harness.add_tenant("acme")
    root = openbao.client()
    mount = f"k8s-{harness.prefix}".rstrip("-")
    kubernetes_cluster.configure_auth(root, mount)
    kubernetes_role(root, mount, policies=["default"], namespaces=["team-b"])
    jwt = kubernetes_cluster.issue_jwt(PROXY_ACCOUNT)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt)

    await harness.start({"vault": {"auth": kubernetes_auth(jwt_file, mount)}})
    readyz = await harness.admin.get("/readyz")
    assert readyz.status == 503
    session = vault_session(harness)
    assert session.last_error is not None
    assert "refuses the kubernetes login" in session.last_error
    assert "namespace not authorized" in session.last_error
    response = await harness.client.get("/api/v2/sim/echo", headers={"X-Tenant-ID": acme.id})
    assert response.status == 503
    body = await response.text()
    assert (await response.json())["error"] == "vault_unavailable"
    assert jwt not in body
    assert jwt not in session.last_error


async def test_a_rotated_service_account_token_is_read_again_at_the_next_login(
    harness: ProxyHarness,
    openbao: OpenBao,
    kubernetes_cluster: KubernetesStandIn,
    tmp_path: Path,
) -> None:
    acme = harness.add_tenant("acme")
    root = openbao.client()
    mount = f"k8s-{harness.prefix}".rstrip("-")
    kubernetes_cluster.configure_auth(root, mount)
    root.sys.create_or_update_policy(name=acme.id, policy=read_policy(acme.id))
    kubernetes_role(root, mount, policies=[acme.id], namespaces=[PROXY_ACCOUNT.namespace])
    old_jwt = kubernetes_cluster.issue_jwt(PROXY_ACCOUNT)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(old_jwt)
    await harness.start({"vault": {"auth": kubernetes_auth(jwt_file, mount)}})
    session = vault_session(harness)
    assert session.token_info is not None

    # The kubelet rotates the projected token; the cluster stops accepting the old one; the
    # Vault token is revoked (as when a lease is cut short).
    jwt_file.write_text(kubernetes_cluster.issue_jwt(PROXY_ACCOUNT))
    kubernetes_cluster.revoke(old_jwt)
    root.auth.token.revoke_accessor(session.token_info.accessor)

    response = await harness.client.get("/api/v2/sim/echo", headers={"X-Tenant-ID": acme.id})
    assert response.status == 200
    assert session.logins >= 2
