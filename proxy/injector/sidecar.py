"""What the injector adds to a pod: the sidecar container, its volumes, and the JSON Patch for both.

Pure functions over the pod as the API server sends it (a JSON object); `plan_injection()` is the
only entry point. Pods opt in with the annotation `genesys-token-proxy.io/inject: "true"`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

PREFIX = "genesys-token-proxy.io/"
INJECT = PREFIX + "inject"  # "true" asks for the sidecar, "false" opts out
STATUS = PREFIX + "status"  # set to "injected" by the injector: never inject twice
MODE = PREFIX + "sidecar"  # "native" (default) or "container" (clusters before 1.29)
VAULT_ROLE = PREFIX + "vault-role"
CONFIG_MAP = PREFIX + "config-map"
IMAGE = PREFIX + "image"
CPU_REQUEST = PREFIX + "cpu-request"
MEMORY_REQUEST = PREFIX + "memory-request"
CPU_LIMIT = PREFIX + "cpu-limit"
MEMORY_LIMIT = PREFIX + "memory-limit"

INJECTED = "injected"
ALWAYS_EXCLUDED_NAMESPACES = frozenset({"kube-system", "kube-public"})

CONTAINER_NAME = "genesys-token-proxy"
CONFIG_VOLUME = "genesys-token-proxy-config"
ADMIN_VOLUME = "genesys-token-proxy-admin"
VAULT_TOKEN_VOLUME = "genesys-token-proxy-vault-token"  # noqa: S105 (a name)
CONFIG_DIR = "/etc/genesys-token-proxy"
CONFIG_FILE = CONFIG_DIR + "/proxy.yaml"
ADMIN_DIR = "/var/run/secrets/genesys-token-proxy/admin"
VAULT_TOKEN_DIR = "/var/run/secrets/genesys-token-proxy/vault"  # noqa: S105 (a path)
ROLE_ENV = "GENESYS_PROXY_VAULT_ROLE"
RUN_AS = 10001  # the image's `genesys-token-proxy` user
# The longest the proxy takes to exit after SIGTERM with the default listen.shutdown_grace (20).
PROXY_SHUTDOWN_SECONDS = 21
# The projected service-account token is only good for Vault (its audience), and short-lived.
VAULT_AUDIENCE = "vault"
VAULT_TOKEN_SECONDS = 3600

_QUANTITY = re.compile(r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NO_SPACE = re.compile(r"^\S+$")


class InjectionRefused(Exception):
    """The pod asked for the sidecar but an annotation is wrong: the pod is denied with this."""


def check_quantity(value: str) -> str:
    """`value` if it is a Kubernetes resource quantity (`100m`, `64Mi`), else ValueError."""
    if not _QUANTITY.fullmatch(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (like 100m or 64Mi)")
    return value


def check_object_name(value: str) -> str:
    """`value` if it is a valid ConfigMap/Secret name (DNS subdomain), else ValueError."""
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid object name (lowercase DNS subdomain)")
    return value


def check_mode(value: str) -> str:
    """`value` if it names a sidecar mode, else ValueError."""
    if value not in ("native", "container"):
        raise ValueError(f"{value!r} is not 'native' or 'container'")
    return value


def check_word(value: str) -> str:
    """`value` if it is non-empty without whitespace (an image, a Vault role), else ValueError."""
    if len(value) > 512 or not _NO_SPACE.fullmatch(value):
        raise ValueError(f"{value!r} must be non-empty, without spaces")
    return value


@dataclass(frozen=True)
class Resources:
    cpu_request: str = "25m"
    memory_request: str = "64Mi"
    cpu_limit: str | None = None  # no CPU limit by default: throttling a proxy adds latency
    memory_limit: str | None = "128Mi"

    def to_json(self) -> dict[str, dict[str, str]]:
        requests = {"cpu": self.cpu_request, "memory": self.memory_request}
        limits = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        result: dict[str, dict[str, str]] = {"requests": requests}
        if any(limits.values()):
            result["limits"] = {k: v for k, v in limits.items() if v}
        return result


@dataclass(frozen=True)
class SidecarOptions:
    """What one sidecar looks like: the injector's defaults, overridden per pod by annotations."""

    image: str
    config_map: str = "genesys-token-proxy"
    admin_secret: str = "genesys-token-proxy-admin"  # noqa: S105 (a Secret's name)
    vault_role: str = "genesys-token-proxy"
    admin_port: int = 9090
    mode: Literal["native", "container"] = "native"
    resources: Resources = field(default_factory=Resources)

    def for_pod(self, annotations: Mapping[str, str]) -> SidecarOptions:
        """These options with the pod's annotations applied; InjectionRefused on a bad one."""

        def pick(key: str, check: Callable[[str], str], default: str | None) -> Any:
            if key not in annotations:
                return default
            try:
                return check(annotations[key])
            except ValueError as exc:
                raise InjectionRefused(f"annotation {key}: {exc}") from None

        resources = self.resources
        return replace(
            self,
            image=pick(IMAGE, check_word, self.image),
            config_map=pick(CONFIG_MAP, check_object_name, self.config_map),
            vault_role=pick(VAULT_ROLE, check_word, self.vault_role),
            mode=pick(MODE, check_mode, self.mode),
            resources=Resources(
                cpu_request=pick(CPU_REQUEST, check_quantity, resources.cpu_request),
                memory_request=pick(MEMORY_REQUEST, check_quantity, resources.memory_request),
                cpu_limit=pick(CPU_LIMIT, check_quantity, resources.cpu_limit),
                memory_limit=pick(MEMORY_LIMIT, check_quantity, resources.memory_limit),
            ),
        )


def sidecar_container(options: SidecarOptions) -> dict[str, Any]:
    """The proxy's container: a native sidecar (restartPolicy Always) or a plain container."""
    port = options.admin_port
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["serve", "--config", CONFIG_FILE],
        "env": [{"name": ROLE_ENV, "value": options.vault_role}],
        "ports": [{"name": "gtp-admin", "containerPort": port, "protocol": "TCP"}],
    }
    if options.mode == "native":
        container["restartPolicy"] = "Always"
    container.update(
        {
            # /readyz answers from state (proxy.ops.health): 503 "starting" until Vault has
            # worked once, then 200 through later Vault outages, 503 "draining" after SIGTERM.
            # Startup: for a native sidecar it also holds back the app containers until the
            # proxy has worked with Vault, so the app's first request does not fail; after
            # STARTUP_SECONDS the kubelet restarts the proxy and tries again.
            # Readiness: safe on /readyz, a Vault blip no longer takes the pod out of service.
            # Liveness: /healthz only: a Vault outage must never restart the proxy (and drop
            # the cached tenants that keep working through it).
            "startupProbe": _probe("/readyz", port, period=1, failures=STARTUP_SECONDS),
            "readinessProbe": _probe("/readyz", port, period=10, failures=3),
            "livenessProbe": _probe("/healthz", port, period=10, failures=3),
            "resources": options.resources.to_json(),
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS,
                "runAsGroup": RUN_AS,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": [
                {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
                {"name": ADMIN_VOLUME, "mountPath": ADMIN_DIR, "readOnly": True},
                {"name": VAULT_TOKEN_VOLUME, "mountPath": VAULT_TOKEN_DIR, "readOnly": True},
            ],
        }
    )
    return container


# How long the startup probe waits for Vault (probed once a second) before a restart.
STARTUP_SECONDS = 120


def _probe(path: str, port: int, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def sidecar_volumes(options: SidecarOptions) -> list[dict[str, Any]]:
    """The config (ConfigMap), the admin bearer token (Secret) and a Vault-only SA token."""
    return [
        {"name": CONFIG_VOLUME, "configMap": {"name": options.config_map}},
        {"name": ADMIN_VOLUME, "secret": {"secretName": options.admin_secret}},
        {
            "name": VAULT_TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "path": "token",
                            "audience": VAULT_AUDIENCE,
                            "expirationSeconds": VAULT_TOKEN_SECONDS,
                        }
                    }
                ]
            },
        },
    ]


def scrape_annotations(options: SidecarOptions) -> dict[str, str]:
    """The annotations Prometheus' Kubernetes pod discovery reads, for the sidecar's /metrics."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(options.admin_port),
        "prometheus.io/path": "/metrics",
    }


def escape_pointer(segment: str) -> str:
    """One JSON Pointer reference token (RFC 6901): `~` is `~0`, `/` is `~1`, in that order."""
    return segment.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class Plan:
    """The injector's answer for one pod: a JSON Patch (empty: leave it alone) and why."""

    patch: list[dict[str, Any]]
    reason: str
    warnings: tuple[str, ...] = ()


def plan_injection(
    pod: Any,
    namespace: str,
    defaults: SidecarOptions,
    excluded_namespaces: frozenset[str] = ALWAYS_EXCLUDED_NAMESPACES,
) -> Plan:
    """Decide what to do with a pod being created; InjectionRefused when its annotations are bad."""
    if not isinstance(pod, Mapping):
        return Plan([], "not a pod object")
    metadata = pod.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    annotations = metadata.get("annotations")
    if annotations is not None and not isinstance(annotations, Mapping):
        return Plan([], "malformed annotations")
    annotations = annotations or {}
    if namespace in excluded_namespaces | ALWAYS_EXCLUDED_NAMESPACES:
        return Plan([], f"namespace {namespace} is excluded")
    wanted = str(annotations.get(INJECT, "")).strip().lower()
    if wanted != "true":
        if wanted in ("", "false"):
            return Plan([], "not requested" if not wanted else "opted out")
        warning = f'{INJECT}: "{annotations[INJECT]}" is not "true" or "false"; not injecting'
        return Plan([], "bad inject annotation", (warning,))
    if annotations.get(STATUS) == INJECTED:
        return Plan([], "already injected")
    spec = pod.get("spec")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("containers"), list):
        raise InjectionRefused("the pod has no spec.containers list to add the sidecar to")
    for key in ("initContainers", "volumes"):
        if spec.get(key) is not None and not isinstance(spec[key], list):
            raise InjectionRefused(f"the pod's spec.{key} is not a list")
    options = defaults.for_pod({str(k): str(v) for k, v in annotations.items()})
    containers = _named(spec.get("containers"))
    init_containers = _named(spec.get("initContainers"))
    if CONTAINER_NAME in containers or CONTAINER_NAME in init_containers:
        warning = f"the pod already has a container named {CONTAINER_NAME}; not injecting"
        return Plan([], "sidecar already present", (warning,))
    volumes = _named(spec.get("volumes"))
    taken = [v["name"] for v in sidecar_volumes(options) if v["name"] in volumes]
    if taken:
        raise InjectionRefused(f"the pod already has a volume named {taken[0]}")
    warnings = _port_warnings(spec, options) + _grace_warnings(spec)
    return Plan(_patch(pod, spec, options), "injected", warnings)


def _named(items: Any) -> set[str]:
    if not isinstance(items, list):
        return set()
    return {str(item.get("name")) for item in items if isinstance(item, Mapping)}


def _grace_warnings(spec: Mapping[str, Any]) -> tuple[str, ...]:
    # The injector does not read the proxy's ConfigMap: it warns against the default grace. It
    # does not raise the pod's value: a short one may be deliberate, and only the owner knows
    # how long the app itself needs.
    grace = spec.get("terminationGracePeriodSeconds")
    if isinstance(grace, int) and not isinstance(grace, bool) and grace < PROXY_SHUTDOWN_SECONDS:
        return (
            f"the pod's terminationGracePeriodSeconds ({grace}) is less than the "
            f"{PROXY_SHUTDOWN_SECONDS} s the {CONTAINER_NAME} sidecar may need to drain "
            "(listen.shutdown_grace 20 + 1): requests in flight may be cut",
        )
    return ()


def _port_warnings(spec: Mapping[str, Any], options: SidecarOptions) -> tuple[str, ...]:
    for container in spec.get("containers", []):
        ports = container.get("ports") if isinstance(container, Mapping) else None
        for port in ports if isinstance(ports, list) else []:
            if isinstance(port, Mapping) and port.get("containerPort") == options.admin_port:
                return (
                    f"container {container.get('name')} declares port {options.admin_port}, "
                    f"which the {CONTAINER_NAME} sidecar's admin listener uses",
                )
    return ()


def _patch(
    pod: Mapping[str, Any], spec: Mapping[str, Any], options: SidecarOptions
) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    added = {STATUS: INJECTED}
    metadata = pod.get("metadata")
    existing = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    if not isinstance(existing, Mapping) or "prometheus.io/scrape" not in existing:
        # Scrape the sidecar's /metrics, unless the pod already directs Prometheus elsewhere.
        added.update(scrape_annotations(options))
    # JSON Patch `add` cannot create parents: add the whole member when it is absent.
    if not isinstance(metadata, Mapping):
        ops.append({"op": "add", "path": "/metadata", "value": {"annotations": added}})
    elif not isinstance(existing, Mapping):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": added})
    else:
        for key, value in added.items():
            path = "/metadata/annotations/" + escape_pointer(key)
            ops.append({"op": "add", "path": path, "value": value})

    volumes = sidecar_volumes(options)
    if isinstance(spec.get("volumes"), list):
        ops.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes)
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})

    container = sidecar_container(options)
    if options.mode == "container":
        ops.append({"op": "add", "path": "/spec/containers/-", "value": container})
    elif isinstance(spec.get("initContainers"), list):
        # First, so the proxy is ready before the pod's other init containers run.
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    return ops
