#!/bin/sh
# The Vault side of the sidecar: Kubernetes auth, and one role + policy per workload that may
# read only that workload's tenants.
#
#   VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=<admin token> \
#     deploy/k8s/vault/setup-vault.sh ROLE NAMESPACE SERVICE_ACCOUNT TENANT [TENANT ...]
#
# Example (the example app in deploy/k8s/example):
#   deploy/k8s/vault/setup-vault.sh example-app genesys-demo example-app acme globex
#
# It enables the kubernetes auth method if it is not yet enabled, and, when KUBERNETES_HOST is
# set, points it at the cluster (Vault running in the cluster: KUBERNETES_HOST=https://kubernetes.default.svc,
# it then reviews tokens with its own service account; Vault outside the cluster: also
# KUBERNETES_CA_CERT=<the API server's CA file> and TOKEN_REVIEWER_JWT_FILE=<a token of a service
# account bound to the system:auth-delegator ClusterRole>: the sidecar's token has the audience
# `vault`, so the API server would not take it to review itself). It writes the policy
# genesys-token-proxy-ROLE (read on each tenant's secret, nothing else: the shipped per-tenant
# policy config/vault/genesys-tenant.hcl.tmpl rendered for each tenant, the README's one source of
# truth) and the role ROLE, bound to that service account in that namespace, for tokens with the
# audience `vault` (what the sidecar's projected token carries). Run it again with a new tenant
# list to change a workload's tenants.
#
# Environment: VAULT_ADDR, VAULT_TOKEN (or VAULT_NAMESPACE, VAULT_CACERT) as for the vault CLI;
# VAULT_CLI (default: vault; `bao` for OpenBao); KV_MOUNT (default secret, KV v2) and
# TENANT_PATH (default genesys/tenants) as in the proxy's vault.kv_mount and vault.path;
# AUTH_MOUNT (default kubernetes); TOKEN_TTL (default 1h).
set -eu

if [ "$#" -lt 4 ]; then
    echo "usage: $0 ROLE NAMESPACE SERVICE_ACCOUNT TENANT [TENANT ...]" >&2
    exit 2
fi
role=$1 namespace=$2 service_account=$3
shift 3

vault=${VAULT_CLI:-vault}
kv_mount=${KV_MOUNT:-secret}
tenant_path=${TENANT_PATH:-genesys/tenants}
auth_mount=${AUTH_MOUNT:-kubernetes}
policy=genesys-token-proxy-$role
template=$(dirname -- "$0")/../../../config/vault/genesys-tenant.hcl.tmpl

tenant_pattern='^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'
for tenant in "$@"; do
    if ! printf '%s\n' "$tenant" | grep -Eq "$tenant_pattern"; then
        echo "$0: error: tenant '$tenant' does not match $tenant_pattern" >&2
        exit 2
    fi
done
# Both go into the policy's path: no glob (`*`, `+`) may widen the grant, no segment may start
# with a dot, and neither may hold a character sed would read in the replacement below.
segments='^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$'
for setting in "KV_MOUNT=$kv_mount" "TENANT_PATH=$tenant_path"; do
    if ! printf '%s\n' "${setting#*=}" | grep -Eq "$segments"; then
        echo "$0: error: ${setting%%=*} '${setting#*=}' does not match $segments" >&2
        exit 2
    fi
done
if [ ! -r "$template" ]; then
    echo "$0: error: policy template $template not found (run the script from the repository)" >&2
    exit 2
fi

# The shipped per-tenant policy for one tenant: the template's placeholder replaced by the id,
# and its default KV path by KV_MOUNT/TENANT_PATH's. Fails if the result lacks the tenant's own
# path (an edited template must not silently grant some other path instead).
render() {
    rendered=$(sed -e "s|\"secret/data/genesys/tenants/[{]tenant}\"|\"$kv_mount/data/$tenant_path/$1\"|g" \
        -e "s|[{]tenant}|$1|g" "$template")
    if ! printf '%s\n' "$rendered" | grep -Fqx "path \"$kv_mount/data/$tenant_path/$1\" {"; then
        echo "$0: error: $template does not grant the path of tenant '$1'" >&2
        return 1
    fi
    printf '%s\n' "$rendered"
}
# Rendered in full before Vault is touched, so a failed render changes nothing there.
policy_text=$(for tenant in "$@"; do render "$tenant" || exit 1; done)

if ! "$vault" auth list -format=json | grep -q "\"$auth_mount/\""; then
    "$vault" auth enable -path="$auth_mount" kubernetes
fi
if [ -n "${KUBERNETES_CA_CERT:-}" ]; then
    # Vault outside the cluster: trust the API server's CA from this file, and do not look for
    # a service account of Vault's own.
    "$vault" write "auth/$auth_mount/config" kubernetes_host="${KUBERNETES_HOST:?is needed too}" \
        kubernetes_ca_cert=@"$KUBERNETES_CA_CERT" disable_local_ca_jwt=true \
        token_reviewer_jwt=@"${TOKEN_REVIEWER_JWT_FILE:?is needed too}"
elif [ -n "${KUBERNETES_HOST:-}" ]; then
    "$vault" write "auth/$auth_mount/config" kubernetes_host="$KUBERNETES_HOST"
fi

# Read on exactly these tenants' secrets (one rendered template each).
printf '%s\n' "$policy_text" | "$vault" policy write "$policy" -

"$vault" write "auth/$auth_mount/role/$role" \
    bound_service_account_names="$service_account" \
    bound_service_account_namespaces="$namespace" \
    audience=vault \
    token_policies="$policy" \
    token_ttl="${TOKEN_TTL:-1h}" \
    token_max_ttl=4h

echo "role $role: service account $namespace/$service_account may read tenants: $*"
