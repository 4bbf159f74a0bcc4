"""A stand-in for the one piece of a Kubernetes cluster Vault's kubernetes auth talks to.

It issues service-account JWTs (ES256, signed with its own key, as a cluster's token issuer
does) and answers `POST /apis/authentication.k8s.io/v1/tokenreviews` over HTTPS with a
self-signed certificate, as the API server does. OpenBao's real kubernetes auth method is
configured against it; nothing of Vault is faked.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


class KubernetesStandIn:
    """Issues service-account tokens and reviews them; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes stand-in")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = self._cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        self.public_key_pem = (
            self._key.public_key().public_bytes(serialization.Encoding.PEM, spki).decode("ascii")
        )
        self._cert_file = directory / "standin.crt"
        self._key_file = directory / "standin.key"
        self._cert_file.write_text(self.ca_pem)
        self._key_file.write_bytes(
            self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        # The token Vault presents to the TokenReview API (its own service account's).
        self.reviewer_jwt = f"reviewer-{secrets.token_hex(8)}"
        self._valid: dict[str, ServiceAccount] = {}
        self.reviews = 0
        self.url = ""

    def issue_jwt(self, account: ServiceAccount) -> str:
        """A projected service-account token for `account`, valid for an hour."""
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "kid": "standin"}
        claims = {
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": account.username,
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + 3600,
            "kubernetes.io": {
                "namespace": account.namespace,
                "serviceaccount": {"name": account.name, "uid": account.uid},
            },
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        jwt = f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        self._valid[jwt] = account
        return jwt

    def revoke(self, jwt: str) -> None:
        """The service account was deleted: its token no longer passes review."""
        self._valid.pop(jwt, None)

    async def _review(self, request: web.Request) -> web.Response:
        self.reviews += 1
        if request.headers.get("Authorization") != f"Bearer {self.reviewer_jwt}":
            return web.json_response(
                {"kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401},
                status=401,
            )
        body = await request.json()
        token = body.get("spec", {}).get("token", "")
        account = self._valid.get(token)
        status: dict[str, Any] = {"authenticated": False}
        if account is not None:
            status = {
                "authenticated": True,
                "user": {"username": account.username, "uid": account.uid},
                "audiences": body.get("spec", {}).get("audiences") or [],
            }
        return web.json_response(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[KubernetesStandIn]:
        app = web.Application()
        app.router.add_post(TOKEN_REVIEW_PATH, self._review)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert_file, self._key_file)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        self.url = f"https://127.0.0.1:{port}"
        try:
            yield self
        finally:
            await runner.cleanup()

    def configure_auth(self, client: hvac.Client, mount: str) -> str:
        """Enable OpenBao's kubernetes auth at `mount` against this cluster; return its accessor."""
        client.sys.enable_auth_method("kubernetes", path=mount)
        client.write_data(
            f"auth/{mount}/config",
            data={
                "kubernetes_host": self.url,
                "kubernetes_ca_cert": self.ca_pem,
                "token_reviewer_jwt": self.reviewer_jwt,
                # Not in a pod: do not look for the pod's own CA and token files.
                "disable_local_ca_jwt": True,
                # Vault checks the JWT's signature itself, as with a cluster's published keys.
                "pem_keys": [self.public_key_pem],
            },
        )
        accessor: str = client.sys.list_auth_methods()["data"][f"{mount}/"]["accessor"]
        return accessor
