# Read access to ONE tenant's Genesys OAuth client: tenant "acme".
#
# The "one policy per tenant path" pattern, rendered from config/vault/genesys-tenant.hcl.tmpl by
# replacing its placeholder (as in the proxy's vault.path) with the tenant id, e.g. for acme:
#
#   sed 's/[{]tenant}/acme/g' config/vault/genesys-tenant.hcl.tmpl \
#     | bao policy write genesys-tenant-acme -
#
# deploy/k8s/vault/setup-vault.sh renders it the same way for each tenant of a workload. Give each
# workload's role exactly the policies of the tenants it serves: a read of any other tenant is
# denied by Vault, and the proxy answers 403 tenant_forbidden.
#
# The path is the KV v2 data path of the proxy's defaults (vault.kv_mount "secret", vault.path
# "genesys/tenants/" + the id); change both if you changed those (setup-vault.sh: KV_MOUNT and
# TENANT_PATH).
path "secret/data/genesys/tenants/acme" {
  capabilities = ["read"]
}
