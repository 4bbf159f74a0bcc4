# Read access keyed on the caller's Kubernetes namespace, for every workload in one policy.
#
# A pod whose service account is in namespace <ns> may read tenant "<ns>" and tenants
# "<ns>.<anything>" (acme, acme.eu, acme.us for namespace acme), and nothing else. The namespace
# comes from the entity alias that Vault's kubernetes auth method records at login, so the
# policy needs that auth mount's accessor: replace KUBERNETES_MOUNT_ACCESSOR before writing it.
#
#   accessor=$(bao auth list -format=json | jq -r '."kubernetes/".accessor')
#   sed "s/KUBERNETES_MOUNT_ACCESSOR/$accessor/g" config/vault/genesys-tenants-by-namespace.hcl \
#     | bao policy write genesys-tenants-by-namespace -
path "secret/data/genesys/tenants/{{identity.entity.aliases.KUBERNETES_MOUNT_ACCESSOR.metadata.service_account_namespace}}" {
  capabilities = ["read"]
}

path "secret/data/genesys/tenants/{{identity.entity.aliases.KUBERNETES_MOUNT_ACCESSOR.metadata.service_account_namespace}}.*" {
  capabilities = ["read"]
}
