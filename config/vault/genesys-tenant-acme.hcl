# Read access to ONE tenant's Genesys OAuth client: tenant "acme".
#
# The "one policy per tenant path" pattern: write one such policy per tenant (copy this file,
# replace "acme"), then give each workload's role exactly the policies of the tenants it serves.
# A read of any other tenant is denied by Vault, and the proxy answers 403 tenant_forbidden.
#
#   bao policy write genesys-tenant-acme config/vault/genesys-tenant-acme.hcl
#
# The path is the KV v2 data path of the proxy's defaults (vault.kv_mount "secret",
# vault.path "genesys/tenants/{tenant}"); change both if you changed those.
path "secret/data/genesys/tenants/acme" {
  capabilities = ["read"]
}
