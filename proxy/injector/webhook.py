"""The mutating admission webhook: AdmissionReview v1 in, a JSON Patch for the pod out, over TLS.

POST /mutate   an AdmissionReview; the answer has the same uid, `allowed: true` and, when the pod
               gets the sidecar, `patchType: JSONPatch` with the base64 patch. A pod whose
               annotations are wrong is denied with a message naming the annotation.
GET  /healthz  200 while the process serves (the injector Deployment's probes)

A request that is not an AdmissionReview gets 400 (not JSON) or a review answer that says what is
wrong, never a crash. A bug is a 500, so the API server applies the webhook's failurePolicy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.filestamp import FileStamp
from proxy.injector.sidecar import (
    ALWAYS_EXCLUDED_NAMESPACES,
    InjectionRefused,
    Plan,
    SidecarOptions,
    plan_injection,
)

log = logging.getLogger("proxy.injector")

API_VERSION = "admission.k8s.io/v1"
MAX_REVIEW_BYTES = 8 * 1024 * 1024  # a pod is at most ~1.5 MiB in etcd; room for the envelope
CERT_RELOAD_INTERVAL = 30.0  # cert-manager renews the Secret in place; pick it up without restarts


@dataclass(frozen=True)
class InjectorSettings:
    """Everything `genesys-token-proxy inject` needs, built once from its flags."""

    sidecar: SidecarOptions
    tls_cert: Path
    tls_key: Path
    host: str = "0.0.0.0"
    port: int = 8443
    excluded_namespaces: frozenset[str] = field(default=ALWAYS_EXCLUDED_NAMESPACES)


class MalformedReview(ValueError):
    """The body is JSON but not an AdmissionReview v1 the injector can answer."""


def review_response(
    uid: str,
    plan: Plan | None = None,
    *,
    denied: str | None = None,
) -> dict[str, Any]:
    """An AdmissionReview v1 answer: allowed with the plan's patch, or denied with a message."""
    response: dict[str, Any] = {"uid": uid, "allowed": denied is None}
    if denied is not None:
        response["status"] = {"code": 400, "reason": "BadRequest", "message": denied}
    elif plan is not None and plan.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(plan.patch).encode()).decode("ascii")
    if plan is not None and plan.warnings:
        response["warnings"] = list(plan.warnings)
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


def parse_review(body: Any) -> dict[str, Any]:
    """The `request` of an AdmissionReview v1, or MalformedReview saying what is wrong."""
    if not isinstance(body, dict):
        raise MalformedReview("the body is not a JSON object")
    if body.get("apiVersion") != API_VERSION or body.get("kind") != "AdmissionReview":
        raise MalformedReview(f"expected apiVersion {API_VERSION} and kind AdmissionReview")
    request = body.get("request")
    if not isinstance(request, dict):
        raise MalformedReview("the AdmissionReview has no request object")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise MalformedReview("the AdmissionReview request has no uid")
    return request


def _is_pod_create(request: dict[str, Any]) -> bool:
    kind, resource = request.get("kind"), request.get("resource")
    return (
        isinstance(kind, dict)
        and kind.get("group", "") == ""
        and kind.get("kind") == "Pod"
        and isinstance(resource, dict)
        and resource.get("resource") == "pods"
        and not request.get("subResource")
        and request.get("operation") == "CREATE"
    )


class Webhook:
    """Answers AdmissionReviews for one set of sidecar defaults."""

    def __init__(self, settings: InjectorSettings) -> None:
        self.settings = settings

    def review(self, request: dict[str, Any]) -> dict[str, Any]:
        """The AdmissionReview answer for one parsed request."""
        uid = request["uid"]
        if not _is_pod_create(request):
            return review_response(uid, Plan([], "not a pod creation"))
        pod = request.get("object")
        metadata = pod.get("metadata") if isinstance(pod, dict) else None
        metadata = metadata if isinstance(metadata, dict) else {}
        namespace = str(request.get("namespace") or metadata.get("namespace") or "")
        name = metadata.get("name") or f"{metadata.get('generateName') or ''}*"
        try:
            plan = plan_injection(
                pod, namespace, self.settings.sidecar, self.settings.excluded_namespaces
            )
        except InjectionRefused as exc:
            log.warning("denied: %s", exc, extra={"uid": uid, "namespace": namespace, "pod": name})
            return review_response(uid, denied=f"genesys-token-proxy injector: {exc}")
        log.info("%s", plan.reason, extra={"uid": uid, "namespace": namespace, "pod": name})
        return review_response(uid, plan)

    async def mutate(self, request: web.Request) -> web.Response:
        """POST /mutate."""
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _bad_request("the body is not JSON")
        try:
            review = parse_review(body)
        except MalformedReview as exc:
            uid = body.get("request", {}).get("uid") if isinstance(body, dict) else None
            log.warning("malformed review: %s", exc)
            return web.json_response(
                review_response(uid if isinstance(uid, str) else "", denied=str(exc))
            )
        return web.json_response(self.review(review))


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": "bad_request", "message": message}, status=400)


async def healthz(request: web.Request) -> web.Response:
    """Liveness and readiness of the injector."""
    return web.json_response({"status": "ok", "version": __version__})


@web.middleware
async def _internal_errors(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """A bug answers 500 (and logs), so the API server applies the configured failurePolicy."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("internal error answering %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal_error", "message": "the injector failed; see its log"},
            status=500,
        )
    return response


def create_injector_app(settings: InjectorSettings) -> web.Application:
    """The webhook's aiohttp application (TLS is the listener's business)."""
    webhook = Webhook(settings)
    app = web.Application(middlewares=[_internal_errors], client_max_size=MAX_REVIEW_BYTES)
    app.router.add_post("/mutate", webhook.mutate)
    app.router.add_get("/healthz", healthz)
    return app


class ReloadingCertificate:
    """A server TLS context whose certificate is re-read when its files change.

    The listener keeps `context` for its lifetime; its SNI callback hands every handshake to the
    newest context that loaded cleanly, so a half-renewed pair never replaces a working one.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self._stamp = self._files_stamp()
        self._current = self._load()
        self.context = self._load()
        # Called for every ClientHello, with or without a server name.
        self.context.sni_callback = self._select

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context

    def _select(self, connection: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        connection.context = self._current

    def _files_stamp(self) -> tuple[FileStamp, FileStamp]:
        return FileStamp.stat(self.cert), FileStamp.stat(self.key)

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; keep the old certificate if they do not load."""
        try:
            stamp = self._files_stamp()
            if stamp == self._stamp:
                return False
            fresh = self._load()
        except (OSError, ssl.SSLError) as exc:
            log.warning("cannot reload the TLS certificate, keeping the old one: %s", exc)
            return False
        self._current, self._stamp = fresh, stamp
        log.info("reloaded the TLS certificate from %s", self.cert)
        return True

    @contextlib.asynccontextmanager
    async def watching(self, interval: float = CERT_RELOAD_INTERVAL) -> AsyncIterator[None]:
        """Check the files every `interval` seconds while the block runs."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(interval)
                self.reload_if_changed()

        task = asyncio.create_task(watch())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
