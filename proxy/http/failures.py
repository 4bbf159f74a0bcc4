"""aiohttp client failures as one clause that names the host and what failed, never a class.

    describe_client_error(exc, "login.aps1.pure.cloud")
    -> "DNS lookup of login.aps1.pure.cloud failed"

The forwarder, the token fetcher and the CLI's `tenant verify` put the clause into their own
sentence ("could not reach Genesys Cloud: connection to api.x refused").
"""

from __future__ import annotations

import ssl

import aiohttp
from yarl import URL


def url_host(url: str | URL) -> str:
    """The `host[:port]` a failure message names: the port only when it is not the default."""
    parsed = url if isinstance(url, URL) else URL(url)
    host = parsed.raw_host or "?"
    if ":" in host:
        host = f"[{host}]"
    return host if parsed.is_default_port() else f"{host}:{parsed.port}"


def describe_client_error(exc: BaseException, host: str) -> str:
    """What went wrong talking to `host`, as a lower-case clause without a full stop."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup of {host} failed"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = _tls_reason(exc.certificate_error)
        return f"TLS handshake with {host} failed: {reason}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake with {host} failed: {_tls_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"connecting to {host} timed out"
    if isinstance(exc, (aiohttp.ServerTimeoutError, TimeoutError)):
        return f"{host} did not answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return f"connection to {host} refused"
        return f"connection to {host} failed: {_os_reason(os_error)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{host} closed the connection before answering"
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return f"TLS handshake with {host} failed: certificate fingerprint mismatch"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the answer from {host} broke off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{host} sent an answer that is not valid HTTP"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"the URL for {host} is not valid"
    if isinstance(exc, (aiohttp.ClientConnectionResetError, ConnectionResetError)):
        return f"{host} reset the connection"
    if isinstance(exc, OSError):
        return f"connection to {host} failed: {_os_reason(exc)}"
    return f"the request to {host} failed"


def _tls_reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        # "certificate verify failed: self-signed certificate", without OpenSSL's bracket code.
        detail = error.verify_message
        return f"certificate verify failed: {detail}" if detail else "certificate verify failed"
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).lower().replace("_", " ")
    return _os_reason(error) if isinstance(error, OSError) else "TLS error"


def _os_reason(error: OSError) -> str:
    # strerror is the C library's sentence ("Network is unreachable"); the class name is not.
    return (error.strerror or "").lower() or "network error"
