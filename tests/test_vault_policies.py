"""The example Vault policies in config/vault/, loaded as they are, enforce per-tenant isolation.

Each test gets its own OpenBao namespace, so the files' fixed paths (tenant "acme") are used
unchanged; the per-tenant template is rendered for "acme" and the namespace-templated policy gets
its auth mount's accessor, both as the README's `sed` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hvac

from proxy.regions import resolve_region
from tests.conftest import OpenBao, ProxyHarness, create_vault_namespace
from tests.kubernetes_standin import KubernetesStandIn, ServiceAccount
from tests.test_vault_kubernetes import kubernetes_auth, kubernetes_role

POLICIES = Path(__file__).resolve().parent.parent / "config" / "vault"
TENANT_TEMPLATE = POLICIES / "genesys-tenant.hcl.tmpl"


def tenant_policy(tenant: str) -> str:
    """The per-tenant template rendered for `tenant`, as the README's sed and setup-vault.sh do."""
    return TENANT_TEMPLATE.read_text().replace("{tenant}", tenant)


def test_the_acme_policy_file_is_the_template_rendered_for_acme() -> None:
    grants = [line for line in TENANT_TEMPLATE.read_text().splitlines() if line.startswith("path")]
    # Exactly one path, the default one, with the placeholder setup-vault.sh rewrites.
    assert grants == ['path "secret/data/genesys/tenants/{tenant}" {']
    assert (POLICIES / "genesys-tenant-acme.hcl").read_text() == tenant_policy("acme")


def add_tenant(harness: ProxyHarness, vault: hvac.Client, tenant: str) -> str:
    """A simulator client for `tenant` and its record in the namespace; returns the client id."""
    client_id = f"client-{harness.prefix}{tenant}"
    secret = f"fake-secret-{harness.prefix}{tenant}"
    harness.sim.add_client(client_id, secret, domain=resolve_region("eu-west-1"))
    vault.secrets.kv.v2.create_or_update_secret(
        path=f"genesys/tenants/{tenant}",
        secret={"client_id": client_id, "client_secret": secret, "region": "eu-west-1"},
    )
    return client_id


async def get_as(harness: ProxyHarness, tenant: str) -> tuple[int, Any]:
    response = await harness.client.get("/api/v2/sim/echo", headers={"X-Tenant-ID": tenant})
    return response.status, await response.json()


async def test_per_tenant_policy_file_lets_a_role_read_its_tenant_only(
    harness: ProxyHarness, openbao: OpenBao, tmp_path: Path
) -> None:
    namespace = f"{harness.prefix}per-tenant"
    vault = create_vault_namespace(openbao, namespace)
    acme_client = add_tenant(harness, vault, "acme")
    add_tenant(harness, vault, "globex")
    vault.sys.create_or_update_policy(name="genesys-tenant-acme", policy=tenant_policy("acme"))
    vault.sys.enable_auth_method("approle")
    vault.auth.approle.create_or_update_approle("acme-app", token_policies=["genesys-tenant-acme"])
    role_id = vault.auth.approle.read_role_id("acme-app")["data"]["role_id"]
    secret_id_file = tmp_path / "secret-id"
    secret_id_file.write_text(
        vault.auth.approle.generate_secret_id("acme-app")["data"]["secret_id"]
    )
    auth = {"method": "approle", "role_id": role_id, "secret_id_file": str(secret_id_file)}

    await harness.start({"vault": {"namespace": namespace, "auth": auth}})
    status, body = await get_as(harness, "acme")
    assert (status, body["client_id"]) == (200, acme_client)
    status, body = await get_as(harness, "globex")
    assert (status, body["error"], body["tenant"]) == (403, "tenant_forbidden", "globex")
    # A denied tenant is the policy at work, not an outage.
    assert (await harness.admin.get("/readyz")).status == 200


async def test_namespace_templated_policy_file_keys_tenants_on_the_pods_namespace(
    harness: ProxyHarness,
    openbao: OpenBao,
    kubernetes_cluster: KubernetesStandIn,
    tmp_path: Path,
) -> None:
    namespace = f"{harness.prefix}by-namespace"
    vault = create_vault_namespace(openbao, namespace)
    clients = {tenant: add_tenant(harness, vault, tenant) for tenant in ("acme", "acme.eu")}
    add_tenant(harness, vault, "globex")
    add_tenant(harness, vault, "acmecorp")  # shares a prefix, not the namespace
    accessor = kubernetes_cluster.configure_auth(vault, "kubernetes")
    text = (POLICIES / "genesys-tenants-by-namespace.hcl").read_text()
    assert "KUBERNETES_MOUNT_ACCESSOR" in text
    policy = text.replace("KUBERNETES_MOUNT_ACCESSOR", accessor)  # the README's sed
    vault.sys.create_or_update_policy(name="genesys-tenants-by-namespace", policy=policy)
    # Any namespace may log in: the policy, not the role, decides which tenants it reads.
    kubernetes_role(
        vault, "kubernetes", policies=["genesys-tenants-by-namespace"], namespaces=["*"]
    )
    jwt_file = tmp_path / "token"
    jwt_file.write_text(kubernetes_cluster.issue_jwt(ServiceAccount("acme", "genesys-proxy")))

    await harness.start(
        {"vault": {"namespace": namespace, "auth": kubernetes_auth(jwt_file, None)}}
    )
    for tenant, client_id in clients.items():
        status, body = await get_as(harness, tenant)
        assert (status, body.get("client_id")) == (200, client_id), tenant
    for tenant in ("globex", "acmecorp"):
        status, body = await get_as(harness, tenant)
        assert (status, body["error"]) == (403, "tenant_forbidden"), tenant
