"""deploy/ and the Dockerfile: strict schema validation, cross-references, config, Vault script."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import kubernetes_validate
import pytest
import yaml

from proxy.injector.sidecar import RUN_AS
from tests.conftest import OpenBao, _bao_binary
from tests.injector_support import (
    K8S,
    ROOT,
    check_proxy_probes,
    load_documents,
    make_tls_files,
)
from tests.test_lifecycle import command, run_cli
from tests.test_vault_policies import tenant_policy

VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
# Custom resources have no schema in kubernetes-validate: checked by the tests below instead.
CUSTOM_GROUPS = ("cert-manager.io/",)
KUSTOMIZE = "kustomize.config.k8s.io/"


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(K8S.rglob("*.yaml"))
        for doc in load_documents(path)
        if not doc["apiVersion"].startswith(KUSTOMIZE)
    ]


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_every_kubernetes_document_validates_strictly(version: str) -> None:
    checked = 0
    for path, doc in manifests():
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']}: {exc.message}")
        checked += 1
    assert checked == 11  # a count, so a file that stops parsing cannot pass unnoticed


def test_only_known_custom_resources_are_used() -> None:
    custom = {
        (doc["apiVersion"], doc["kind"])
        for _, doc in manifests()
        if doc["apiVersion"].startswith(CUSTOM_GROUPS)
    }
    assert custom == {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}


def test_kustomizations_list_every_manifest() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        (doc,) = load_documents(kustomization)
        directory = kustomization.parent
        present = {p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
        present |= {p.name for p in directory.iterdir() if (p / "kustomization.yaml").exists()}
        assert set(doc["resources"]) == present, kustomization


def test_webhook_reaches_the_injector_service_with_a_cert_manager_certificate() -> None:
    webhook_config = find("MutatingWebhookConfiguration", "genesys-token-proxy-injector")
    (webhook,) = webhook_config["webhooks"]
    service_ref = webhook["clientConfig"]["service"]
    service = find("Service", service_ref["name"])
    assert service["metadata"]["namespace"] == service_ref["namespace"]
    assert service_ref["path"] == "/mutate"
    assert [p["port"] for p in service["spec"]["ports"]] == [service_ref["port"]]
    assert webhook["failurePolicy"] in ("Fail", "Ignore")
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["sideEffects"] == "None"

    # Never the system namespaces, nor the injector's own.
    excluded = next(
        e
        for e in webhook["namespaceSelector"]["matchExpressions"]
        if e["key"] == "kubernetes.io/metadata.name"
    )
    assert excluded["operator"] == "NotIn"
    assert {"kube-system", "kube-public", service_ref["namespace"]} <= set(excluded["values"])
    assert webhook["objectSelector"]["matchExpressions"]

    certificate = find("Certificate", "genesys-token-proxy-injector")
    annotation = webhook_config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == f"{certificate['metadata']['namespace']}/genesys-token-proxy-injector"
    host = f"{service_ref['name']}.{service_ref['namespace']}.svc"
    assert host in certificate["spec"]["dnsNames"]
    issuer = find(
        certificate["spec"]["issuerRef"]["kind"], certificate["spec"]["issuerRef"]["name"]
    )
    assert issuer["metadata"]["namespace"] == certificate["metadata"]["namespace"]
    deployment = find("Deployment", "genesys-token-proxy-injector")
    secrets = [v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"]]
    assert secrets == [certificate["spec"]["secretName"]]


def test_injector_defaults_match_the_example_namespace() -> None:
    deployment = find("Deployment", "genesys-token-proxy-injector")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    config_map = find("ConfigMap", flags["config-map"])
    assert config_map["metadata"]["namespace"] == "genesys-demo"
    namespace = find("Namespace", "genesys-demo")
    assert namespace["metadata"]["labels"]["genesys-token-proxy.io/injection"] == "enabled"


def test_example_sidecar_probes_hold_the_app_until_vault_works_and_survive_outages() -> None:
    deployment = find("Deployment", "example-app")
    pod = deployment["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "genesys-token-proxy"]
    config = yaml.safe_load(find("ConfigMap", "genesys-token-proxy")["data"]["proxy.yaml"])
    # A native sidecar: its startup probe holds back the app containers until it has passed.
    assert sidecar["restartPolicy"] == "Always"
    check_proxy_probes(sidecar, config["admin"]["port"])
    # The app's own containers have no probe that depends on the proxy's Vault.
    for container in pod["containers"]:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container.get(probe, {}).get("httpGet", {}).get("path") != "/readyz"


def _example_config(tmp_path: Path) -> Path:
    config_map = find("ConfigMap", "genesys-token-proxy")
    path = tmp_path / "proxy.yaml"
    path.write_text(config_map["data"]["proxy.yaml"], encoding="utf-8")
    return path


def test_pods_running_the_proxy_give_it_time_to_drain() -> None:
    config = yaml.safe_load(find("ConfigMap", "genesys-token-proxy")["data"]["proxy.yaml"])
    needed = config["listen"]["shutdown_grace"] + 1  # the proxy exits within grace + 1 s
    deployments = [d for _, d in manifests() if d["kind"] == "Deployment"]
    examples = [d for d in deployments if d["metadata"]["name"].startswith("example-app")]
    assert len(examples) == 2
    for deployment in examples:
        spec = deployment["spec"]["template"]["spec"]
        # The app's own shutdown comes first: leave it more than Kubernetes' default margin.
        assert spec["terminationGracePeriodSeconds"] >= needed + 30, deployment["metadata"]


def test_example_config_map_passes_check_config_with_the_role_variable(tmp_path: Path) -> None:
    path = _example_config(tmp_path)

    result = run_cli(
        "check-config",
        "--config",
        str(path),
        "--print",
        env={"GENESYS_PROXY_VAULT_ROLE": "example-app"},
    )

    assert result.returncode == 0, result.stderr
    auth = yaml.safe_load(result.stdout)["vault"]["auth"]  # --print is YAML that loads back
    assert (auth["role"], auth["method"]) == ("example-app", "kubernetes")


def test_example_config_map_without_a_role_names_the_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GENESYS_PROXY_VAULT_ROLE"}
    result = subprocess.run(
        command("check-config", "--config", str(_example_config(tmp_path))),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "vault.auth.role" in result.stderr


# -- the Dockerfile ---------------------------------------------------------------------------


def _final_stage() -> list[str]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    # Join continuation lines, drop comments.
    lines = [ln for ln in text.replace("\\\n", " ").splitlines() if ln and not ln.startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("FROM ")]
    assert len(starts) >= 2, "the Dockerfile is multi-stage"
    return lines[starts[-1] :]


def test_dockerfile_installs_the_package_the_way_the_readme_does() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    installs = re.findall(r"^RUN (.*pip install.*)$", text, flags=re.MULTILINE)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install .\n" in readme
    assert installs == ["pip install ."]
    # No pip cache in the layers (the build stage sets this), and the README mentions the image.
    assert "PIP_NO_CACHE_DIR=1" in text
    assert "docker build -t genesys-token-proxy:0.1.0 ." in readme


def test_dockerfile_final_stage_runs_as_the_non_root_user_the_manifests_expect() -> None:
    final = _final_stage()
    (user,) = [ln.split()[1] for ln in final if ln.startswith("USER ")]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric, so the kubelet can check runAsNonRoot"
    assert int(uid) != 0
    assert int(uid) == RUN_AS == int(gid)
    assert not any("pip install" in ln or "apt-get" in ln for ln in final)
    assert any(ln.startswith("COPY --from=build /opt/venv") for ln in final)
    (entrypoint,) = [ln for ln in final if ln.startswith("ENTRYPOINT")]
    assert entrypoint == 'ENTRYPOINT ["genesys-token-proxy"]'
    (expose,) = [ln.split()[1:] for ln in final if ln.startswith("EXPOSE")]
    assert set(expose) == {"8080", "9090", "8443"}
    labels = " ".join(ln for ln in final if ln.startswith("LABEL"))
    for key in ("title", "description", "version", "licenses", "revision", "created"):
        assert f"org.opencontainers.image.{key}=" in labels


# Names Debian's base-passwd reserves (3.6.1, bookworm: /usr/share/base-passwd/*.master), plus
# `gnats` from older releases. Every Debian image, the official Python one included, has them.
# fmt: off
DEBIAN_RESERVED_USERS = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "gnats", "_apt", "nobody"
})
DEBIAN_RESERVED_GROUPS = frozenset({
    "root", "daemon", "bin", "sys", "adm", "tty", "disk", "lp", "mail", "news", "uucp", "man",
    "proxy", "kmem", "dialout", "fax", "voice", "cdrom", "floppy", "tape", "sudo", "audio", "dip",
    "www-data", "backup", "operator", "list", "irc", "src", "gnats", "shadow", "utmp", "video",
    "sasl", "plugdev", "staff", "games", "users", "nogroup"
})
# fmt: on


def _debian_reserved(kind: str, built_in: frozenset[str]) -> frozenset[str]:
    """The list above, and this machine's base-passwd list where there is one."""
    master = Path("/usr/share/base-passwd") / f"{kind}.master"
    if not master.exists():
        return built_in
    return built_in | {line.split(":")[0] for line in master.read_text().splitlines() if line}


def test_dockerfile_user_and_group_are_names_debian_does_not_reserve() -> None:
    (run,) = [ln for ln in _final_stage() if ln.startswith("RUN ") and "useradd" in ln]
    commands = {cmd.split()[0]: cmd.split() for cmd in run.removeprefix("RUN ").split("&&")}
    groupadd, useradd = commands["groupadd"], commands["useradd"]
    group, user = groupadd[-1], useradd[-1]
    assert group not in _debian_reserved("group", DEBIAN_RESERVED_GROUPS), group
    assert user not in _debian_reserved("passwd", DEBIAN_RESERVED_USERS), user
    assert groupadd[groupadd.index("--gid") + 1] == str(RUN_AS)
    assert useradd[useradd.index("--uid") + 1] == str(RUN_AS)
    assert useradd[useradd.index("--gid") + 1] == group


def test_dockerfile_needs_no_frontend_image() -> None:
    # A `# syntax=` directive makes BuildKit pull a frontend from Docker Hub before building.
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.MULTILINE | re.IGNORECASE)


def test_dockerfile_leaves_no_pip_or_setuptools_in_the_virtualenv() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    build = text.split("\nFROM ")[1]
    runs = re.findall(r"^RUN (.*)$", build, flags=re.MULTILINE)
    install = runs.index("pip install .")
    (uninstall,) = [i for i, run in enumerate(runs) if "pip uninstall" in run]
    assert uninstall > install
    assert {"pip", "setuptools"} <= set(runs[uninstall].split())
    assert "--yes" in runs[uninstall].split()


def test_image_check_skips_loudly_and_refuses_to_skip_under_ci() -> None:
    script = ROOT / ".ci" / "image-check"
    env = {**os.environ, "GENESYS_PROXY_IMAGE_CHECK": "skip", "CI": ""}
    skipped = subprocess.run([str(script)], capture_output=True, text=True, env=env, check=False)
    assert skipped.returncode == 0
    assert "image check SKIPPED: GENESYS_PROXY_IMAGE_CHECK=skip" in skipped.stdout
    env["CI"] = "true"
    refused = subprocess.run([str(script)], capture_output=True, text=True, env=env, check=False)
    assert refused.returncode == 1
    assert "CI=true requires it" in refused.stderr
    # .ci/run runs it, before pytest (whose exit status ends the script).
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci_run.index(".ci/image-check") < ci_run.index("python -m pytest")


# -- the Vault side ---------------------------------------------------------------------------


def test_vault_setup_script_lets_a_role_read_only_its_tenants(
    openbao: OpenBao, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    reviewer = tmp_path / "reviewer.jwt"
    reviewer.write_text("fake.reviewer.jwt-not-real")
    role, mount = f"app-{suffix}", f"k8s-{suffix}"
    mine, theirs = f"mine-{suffix}", f"theirs-{suffix}"
    for tenant in (mine, theirs):
        openbao.put_tenant(tenant, "fake-id", "fake-secret-not-real", "eu-west-1")
    env = {
        **os.environ,
        "VAULT_ADDR": openbao.address,
        "VAULT_TOKEN": openbao.root_token,
        "VAULT_CLI": _bao_binary(),
        "AUTH_MOUNT": mount,
        "KUBERNETES_HOST": "https://kubernetes.example:6443",
        # Vault outside the cluster: the API server's CA comes from a file.
        "KUBERNETES_CA_CERT": str(make_tls_files(tmp_path).ca),
        "TOKEN_REVIEWER_JWT_FILE": str(reviewer),
    }
    script = K8S / "vault" / "setup-vault.sh"

    result = subprocess.run(
        [str(script), role, "genesys-demo", "example-app", mine],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    root = openbao.client()
    bound = root.read(f"auth/{mount}/role/{role}")["data"]
    assert bound["bound_service_account_names"] == ["example-app"]
    assert bound["bound_service_account_namespaces"] == ["genesys-demo"]
    assert bound["audience"] == "vault"
    assert bound["token_policies"] == [f"genesys-token-proxy-{role}"]
    # The installed policy is config/vault/'s per-tenant template rendered for the tenant.
    installed = root.sys.read_policy(name=f"genesys-token-proxy-{role}")["data"]["rules"]
    assert installed == tenant_policy(mine)
    # A token with exactly the role's policies reads its tenant and nothing else.
    token = root.auth.token.create(policies=bound["token_policies"], ttl="5m")["auth"]
    client = hvac.Client(url=openbao.address, token=token["client_token"])
    secret = client.secrets.kv.v2.read_secret_version(
        path=f"genesys/tenants/{mine}", mount_point="secret", raise_on_deleted_version=True
    )
    assert secret["data"]["data"]["client_id"] == "fake-id"
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(
            path=f"genesys/tenants/{theirs}", mount_point="secret", raise_on_deleted_version=True
        )
    # Running it again is fine (the auth method exists already) and changes the role's tenants.
    again = subprocess.run(
        [str(script), role, "genesys-demo", "example-app", mine, theirs],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    installed = root.sys.read_policy(name=f"genesys-token-proxy-{role}")["data"]["rules"]
    assert installed == tenant_policy(mine) + tenant_policy(theirs)
    secret = client.secrets.kv.v2.read_secret_version(
        path=f"genesys/tenants/{theirs}", mount_point="secret", raise_on_deleted_version=True
    )
    assert secret["data"]["data"]["client_id"] == "fake-id"


def test_vault_setup_script_renders_the_template_for_another_kv_mount_and_path(
    openbao: OpenBao,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    role, mount, kv_mount = f"app-{suffix}", f"k8s-{suffix}", f"kv-{suffix}"
    root = openbao.client()
    root.sys.enable_secrets_engine("kv", path=kv_mount, options={"version": "2"})
    root.secrets.kv.v2.create_or_update_secret(
        path="apps/genesys/acme", secret={"client_id": "fake-id"}, mount_point=kv_mount
    )
    env = {
        **os.environ,
        "VAULT_ADDR": openbao.address,
        "VAULT_TOKEN": openbao.root_token,
        "VAULT_CLI": _bao_binary(),
        "AUTH_MOUNT": mount,
        "KV_MOUNT": kv_mount,
        "TENANT_PATH": "apps/genesys",
    }

    result = subprocess.run(
        [str(K8S / "vault" / "setup-vault.sh"), role, "ns", "sa", "acme"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    installed = root.sys.read_policy(name=f"genesys-token-proxy-{role}")["data"]["rules"]
    # The template with only its path moved: the rest of the text is config/vault/'s.
    expected = tenant_policy("acme").replace(
        '"secret/data/genesys/tenants/acme"', f'"{kv_mount}/data/apps/genesys/acme"'
    )
    assert installed == expected != tenant_policy("acme")
    token = root.auth.token.create(policies=[f"genesys-token-proxy-{role}"], ttl="5m")["auth"]
    client = hvac.Client(url=openbao.address, token=token["client_token"])
    secret = client.secrets.kv.v2.read_secret_version(
        path="apps/genesys/acme", mount_point=kv_mount, raise_on_deleted_version=True
    )
    assert secret["data"]["data"]["client_id"] == "fake-id"


def test_vault_setup_script_refuses_a_template_without_the_tenants_path(tmp_path: Path) -> None:
    # A copy of the repository's layout whose template grants some other path.
    script = tmp_path / "deploy" / "k8s" / "vault" / "setup-vault.sh"
    script.parent.mkdir(parents=True)
    script.write_bytes((K8S / "vault" / "setup-vault.sh").read_bytes())
    script.chmod(0o755)
    template = tmp_path / "config" / "vault" / "genesys-tenant.hcl.tmpl"
    template.parent.mkdir(parents=True)
    template.write_text('path "secret/data/genesys/tenants/*" {\n  capabilities = ["read"]\n}\n')
    # Vault is never reached: a CLI that fails would make the script fail without this message.
    env = {**os.environ, "VAULT_CLI": "false"}

    result = subprocess.run(
        [str(script), "r", "ns", "sa", "acme"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert "does not grant the path of tenant 'acme'" in result.stderr


@pytest.mark.parametrize(
    ("setting", "tenant", "named"),
    [
        ({}, "../../sys", "tenant '../../sys'"),
        ({"KV_MOUNT": "secret/*"}, "acme", "KV_MOUNT 'secret/*'"),
        ({"TENANT_PATH": "genesys/../sys"}, "acme", "TENANT_PATH 'genesys/../sys'"),
        ({"TENANT_PATH": "genesys|tenants"}, "acme", "TENANT_PATH 'genesys|tenants'"),
    ],
)
def test_vault_setup_script_refuses_a_bad_tenant_id_or_path(
    openbao: OpenBao, setting: dict[str, str], tenant: str, named: str
) -> None:
    env = {
        **os.environ,
        "VAULT_ADDR": openbao.address,
        "VAULT_TOKEN": openbao.root_token,
        "VAULT_CLI": _bao_binary(),
        **setting,
    }
    result = subprocess.run(
        [str(K8S / "vault" / "setup-vault.sh"), "r", "ns", "sa", tenant],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert named in result.stderr
    assert result.stderr.count("\n") == 1  # one line
