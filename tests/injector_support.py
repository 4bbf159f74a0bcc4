"""Test helpers for the injector: a throwaway CA and server certificate, AdmissionReviews, pods."""

from __future__ import annotations

import copy
import datetime
import ipaddress
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
EXAMPLE_INJECTED = K8S / "example" / "deployment-injected.yaml"
EXAMPLE_HAND_WRITTEN = K8S / "example" / "deployment.yaml"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls_files(directory: Path, *, prefix: str = "injector") -> TlsFiles:
    """A fresh CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("genesys-token-proxy-injector"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        directory / f"{prefix}-ca.crt", directory / f"{prefix}.crt", directory / f"{prefix}.key"
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def pod_from_deployment(path: Path) -> dict[str, Any]:
    """The Pod a ReplicaSet of this Deployment creates (as the API server sees it at admission)."""
    (deployment,) = load_documents(path)
    template = copy.deepcopy(deployment["spec"]["template"])
    metadata = template["metadata"]
    metadata["generateName"] = f"{deployment['metadata']['name']}-7d9f8c6b5-"
    metadata["namespace"] = deployment["metadata"]["namespace"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def admission_review(
    pod: Any,
    *,
    namespace: str = "genesys-demo",
    operation: str = "CREATE",
    kind: str = "Pod",
    resource: str = "pods",
) -> dict[str, Any]:
    """An AdmissionReview v1 request as the API server sends it for a pod."""
    group = "" if kind == "Pod" else "apps"
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "requestKind": {"group": group, "version": "v1", "kind": kind},
            "requestResource": {"group": group, "version": "v1", "resource": resource},
            "name": "",
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def check_proxy_probes(container: dict[str, Any], admin_port: int) -> None:
    """The proxy container's probes as docs/pending/12-readiness.md explains them.

    Startup and readiness on /readyz (starting until Vault has worked once, then ready through
    Vault outages); liveness on /healthz only, so a Vault outage never restarts the proxy.
    """
    startup, readiness = container["startupProbe"], container["readinessProbe"]
    liveness = container["livenessProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": admin_port}
    assert readiness["httpGet"] == {"path": "/readyz", "port": admin_port}
    assert liveness["httpGet"] == {"path": "/healthz", "port": admin_port}
    # Startup waits at least a minute for Vault, asking about once a second.
    assert startup["periodSeconds"] <= 2
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    # /readyz answers from state: no probe needs room for a Vault call (vault.timeout).
    for probe in (startup, readiness, liveness):
        assert 1 <= probe["timeoutSeconds"] <= 5
