# What `genesys-token-proxy tenant set|show|list|verify|delete` needs: manage every tenant's
# record. For operators and provisioning jobs, never for the proxy itself.
#
#   bao policy write genesys-tenant-admin config/vault/genesys-tenant-admin.hcl
path "secret/data/genesys/tenants/*" {
  capabilities = ["create", "update", "read"]
}

# list, and delete with every version (KV v2 keeps versions under metadata/).
path "secret/metadata/genesys/tenants/*" {
  capabilities = ["list", "read", "delete"]
}

path "secret/metadata/genesys/tenants" {
  capabilities = ["list"]
}
