"""Logging in to Vault by the configured method, and the token that comes of it.

    token       a literal token (`vault.auth.token`, $VAULT_TOKEN), or a file re-read when it
                changes (`vault.auth.token_file`, a Vault Agent sink), looked up for its TTL
    kubernetes  the pod's service-account JWT (`vault.auth.jwt_file`) for `vault.auth.role`
    approle     `vault.auth.role_id` and the secret id in `vault.auth.secret_id_file`

Everything here is blocking and runs in the session's worker threads (`proxy.vault.session`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import hvac.exceptions

from proxy.config import VaultAuthConfig
from proxy.errors import VaultUnavailable
from proxy.filestamp import FileStamp

log = logging.getLogger("proxy.vault.login")


@dataclass(frozen=True)
class TokenInfo:
    """What Vault said about the session's token when it was obtained or renewed.

    The renewal loop plans with it: renew before `ttl` runs out while `renewable`, else log in.
    """

    ttl: float  # seconds left when obtained; 0 means it never expires (a root token)
    renewable: bool
    obtained_at: float  # on the session's clock
    # Lets an operator find the token in Vault (`token lookup -accessor`); not a credential
    # on its own, but kept out of reprs all the same.
    accessor: str | None = field(default=None, repr=False)
    # The TTL the token was issued with; a renewal granting less means Vault's max TTL caps it.
    issued_ttl: float = 0.0

    @property
    def expires_at(self) -> float | None:
        """When the token expires on the session's clock; None if it never does."""
        return self.obtained_at + self.ttl if self.ttl > 0 else None


class VaultLogin:
    """Sets the hvac client's token by the configured method; counts changes of it.

    `generation` goes up whenever the client's token changes (a login, a rewritten token
    file), so a caller can tell whether the token a request was denied with is still current.
    """

    def __init__(
        self, auth: VaultAuthConfig, client: hvac.Client, clock: Callable[[], float]
    ) -> None:
        self._auth = auth
        self._client = client
        self._clock = clock
        self._token_lock = threading.Lock()
        self._token_file_seen: FileStamp | None = None
        self._token_file_problem: str | None = None
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def token_changed(self) -> None:
        """Count a new token (the session calls it after a login)."""
        with self._token_lock:
            self._generation += 1

    def login(self) -> TokenInfo:
        """Log in (from a worker); a refusal is VaultUnavailable: nothing can be read without it."""
        try:
            return self._login_by_method()
        except (
            hvac.exceptions.Forbidden,
            hvac.exceptions.Unauthorized,
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.InvalidPath,
        ) as exc:
            if self._auth.method == "token":
                message = "Vault rejects the configured token (expired or revoked?)"
            else:
                message = f"Vault refuses the {self._auth.method} login"
            raise VaultUnavailable(f"{message}: {vault_message(exc)}") from exc

    def _login_by_method(self) -> TokenInfo:
        """hvac's login methods set the client's token themselves."""
        auth = self._auth
        if auth.method == "token":
            if auth.token_file is not None:
                with self._token_lock:
                    self._token_file_seen = None
                self.sync_token_file(strict=True)
            elif auth.token:
                self._client.token = auth.token
            else:
                raise VaultUnavailable(
                    "no Vault token: set vault.auth.token, VAULT_TOKEN or vault.auth.token_file"
                )
            data = self._client.auth.token.lookup_self().get("data") or {}
            ttl, renewable = data.get("ttl"), data.get("renewable")
            issued_ttl = data.get("creation_ttl") or ttl
            if issued_ttl and not ttl:
                # Under a second left (Vault truncates): not a token that never expires.
                ttl = 0.001
        else:
            if auth.method == "kubernetes":
                jwt = read_credential_file(auth.jwt_file, "vault.auth.jwt_file")
                response = self._client.auth.kubernetes.login(
                    auth.role, jwt, mount_point=auth.mount or "kubernetes"
                )
            else:
                assert auth.secret_id_file is not None  # the config loader insists on it
                secret_id = read_credential_file(auth.secret_id_file, "vault.auth.secret_id_file")
                response = self._client.auth.approle.login(
                    auth.role_id, secret_id, mount_point=auth.mount or "approle"
                )
            data = response.get("auth") or {}
            ttl, renewable = data.get("lease_duration"), data.get("renewable")
            issued_ttl = ttl
        return TokenInfo(
            ttl=float(ttl or 0),
            renewable=bool(renewable),
            obtained_at=self._clock(),
            accessor=data.get("accessor"),
            issued_ttl=float(issued_ttl or 0),
        )

    def sync_token_file(self, *, strict: bool = False) -> None:
        """Use the token file's token if the file changed (a Vault Agent sink rewrites it)."""
        path = self._auth.token_file
        assert path is not None
        with self._token_lock:
            try:
                seen = FileStamp.stat(path)
                if seen == self._token_file_seen:
                    return
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problem: str | None = f"cannot read vault.auth.token_file {path}: {exc.strerror}"
                seen = None
            else:
                problem = f"vault.auth.token_file {path} is empty" if not token else None
            if problem is not None:
                if strict:
                    raise VaultUnavailable(problem)
                # Warn once per problem, not on every request while the file is missing.
                if problem != self._token_file_problem:
                    log.warning("%s; keeping the current token", problem)
                self._token_file_problem = problem
                self._token_file_seen = seen
                return
            self._token_file_problem = None
            self._token_file_seen = seen
            if token != self._client.token:
                if self._client.token:
                    log.info("Vault token file %s changed; using its new token", path)
                self._client.token = token
                self._generation += 1


def read_credential_file(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise VaultUnavailable(f"cannot read {key} {path}: {exc.strerror}") from exc
    if not value:
        raise VaultUnavailable(f"{key} {path} is empty")
    return value


def vault_message(exc: hvac.exceptions.VaultError) -> str:
    """Vault's own error text on one line (never a secret: Vault does not echo request bodies).

    Vault wraps some errors as "1 error occurred:\n\t* past the max TTL, cannot renew\n\n";
    without any text, the kind of answer in words ("internal server error"), not a class name.
    """
    text = "; ".join(str(error) for error in exc.errors or [] if error)
    text = _ERRORS_OCCURRED.sub("", _BULLET.sub("", text))
    text = " ".join(text.split()).strip("; ")
    return text or _CAMEL_CASE.sub(" ", type(exc).__name__).lower()


_BULLET = re.compile(r"(?m)^\s*\* ")
_ERRORS_OCCURRED = re.compile(r"\d+ errors? occurred:\s*")
_CAMEL_CASE = re.compile(r"(?<=[a-z])(?=[A-Z])")
