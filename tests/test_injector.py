"""The sidecar injector over real HTTPS: AdmissionReview v1 in, a JSON Patch giving a valid pod.

Pods come from the example Deployments in deploy/k8s/example; patches are applied with the
`jsonpatch` library and the results validated with kubernetes-validate in strict mode.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest
from aiohttp import web

from proxy.injector.sidecar import (
    CONTAINER_NAME,
    INJECT,
    STATUS,
    SidecarOptions,
    escape_pointer,
)
from proxy.injector.webhook import (
    InjectorSettings,
    ReloadingCertificate,
    create_injector_app,
)
from tests.injector_support import (
    EXAMPLE_HAND_WRITTEN,
    EXAMPLE_INJECTED,
    TlsFiles,
    admission_review,
    check_proxy_probes,
    make_tls_files,
    pod_from_deployment,
)

IMAGE = "genesys-token-proxy:0.1.0"  # what the hand-written example and the injector Deployment use
OLDEST_NATIVE_SIDECAR = "1.29.0"
NEWEST = kubernetes_validate.latest_version()


@dataclass
class Injector:
    url: str
    session: aiohttp.ClientSession
    certificate: ReloadingCertificate
    tls: TlsFiles

    async def review(self, pod: Any, **kwargs: Any) -> dict[str, Any]:
        """Send an AdmissionReview for `pod`; the answer's `response`, checked for the uid."""
        review = admission_review(pod, **kwargs)
        async with self.session.post(f"{self.url}/mutate", json=review) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == review["request"]["uid"]
        return dict(answer["response"])

    async def patched(self, pod: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """The pod after the injector's patch (which must be there)."""
        response = await self.review(pod, **kwargs)
        assert response["allowed"] is True
        assert response["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(response["patch"]))
        return dict(jsonpatch.apply_patch(pod, patch))


async def start_injector(tls: TlsFiles, **settings: Any) -> tuple[web.AppRunner, int, Any]:
    defaults = settings.pop("sidecar", SidecarOptions(image=IMAGE))
    config = InjectorSettings(sidecar=defaults, tls_cert=tls.cert, tls_key=tls.key, **settings)
    certificate = ReloadingCertificate(tls.cert, tls.key)
    runner = web.AppRunner(create_injector_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=certificate.context)
    await site.start()
    return runner, int(runner.addresses[0][1]), certificate


@pytest.fixture
async def injector(tmp_path: Path) -> AsyncIterator[Injector]:
    tls = make_tls_files(tmp_path)
    runner, port, certificate = await start_injector(tls)
    client_tls = ssl.create_default_context(cafile=str(tls.ca))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as session:
        yield Injector(f"https://127.0.0.1:{port}", session, certificate, tls)
    await runner.cleanup()


def validate_strictly(pod: dict[str, Any], *versions: str) -> None:
    for version in versions or (OLDEST_NATIVE_SIDECAR, NEWEST):
        kubernetes_validate.validate(pod, version, strict=True)


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    (sidecar,) = [c for c in pod["spec"].get("initContainers", []) if c["name"] == CONTAINER_NAME]
    return dict(sidecar)


# -- the happy path ---------------------------------------------------------------------------


async def test_injected_example_pod_validates_and_runs_the_proxy_as_a_native_sidecar(
    injector: Injector,
) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    validate_strictly(pod)
    assert "initContainers" not in pod["spec"]
    assert "volumes" not in pod["spec"]

    patched = await injector.patched(pod)

    validate_strictly(patched)
    sidecar = sidecar_of(patched)
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar
    assert sidecar["image"] == IMAGE
    check_proxy_probes(sidecar, 9090)
    assert {"name": "GENESYS_PROXY_VAULT_ROLE", "value": "example-app"} in sidecar["env"]
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert patched["metadata"]["annotations"][STATUS] == "injected"
    assert patched["spec"]["containers"] == pod["spec"]["containers"]  # the app is untouched
    mounted = {m["name"] for m in sidecar["volumeMounts"]}
    assert mounted == {v["name"] for v in patched["spec"]["volumes"]}


async def test_injector_adds_exactly_the_sidecar_of_the_hand_written_example(
    injector: Injector,
) -> None:
    patched = await injector.patched(pod_from_deployment(EXAMPLE_INJECTED))
    by_hand = pod_from_deployment(EXAMPLE_HAND_WRITTEN)

    assert patched["spec"]["initContainers"] == by_hand["spec"]["initContainers"]
    assert patched["spec"]["volumes"] == by_hand["spec"]["volumes"]
    annotations = patched["metadata"]["annotations"]
    for key, value in by_hand["metadata"]["annotations"].items():
        assert annotations[key] == value


async def test_second_review_of_a_patched_pod_yields_no_patch(injector: Injector) -> None:
    patched = await injector.patched(pod_from_deployment(EXAMPLE_INJECTED))

    response = await injector.review(patched)

    assert response["allowed"] is True
    assert "patch" not in response
    assert "patchType" not in response


async def test_pod_with_init_containers_and_volumes_gets_the_sidecar_first_and_escaped_paths(
    injector: Injector,
) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    pod["spec"]["initContainers"] = [
        {"name": "migrate", "image": "busybox:1.36", "command": ["true"]}
    ]
    pod["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]

    response = await injector.review(pod)

    patch = json.loads(base64.b64decode(response["patch"]))
    paths = [op["path"] for op in patch]
    # RFC 6901: the '/' inside the annotation key is '~1'.
    assert "/metadata/annotations/genesys-token-proxy.io~1status" in paths
    assert "/metadata/annotations/prometheus.io~1scrape" in paths
    assert "/spec/initContainers/0" in paths
    assert paths.count("/spec/volumes/-") == 3
    patched = jsonpatch.apply_patch(pod, patch)
    validate_strictly(patched)
    assert [c["name"] for c in patched["spec"]["initContainers"]] == [CONTAINER_NAME, "migrate"]
    assert patched["spec"]["volumes"][0] == {"name": "scratch", "emptyDir": {}}


async def test_plain_container_mode_for_clusters_before_1_29(injector: Injector) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    pod["metadata"]["annotations"]["genesys-token-proxy.io/sidecar"] = "container"

    patched = await injector.patched(pod)

    assert "initContainers" not in patched["spec"]
    sidecar = patched["spec"]["containers"][-1]
    assert sidecar["name"] == CONTAINER_NAME
    assert "restartPolicy" not in sidecar
    check_proxy_probes(sidecar, 9090)  # the same probes (startup holds back only itself here)
    assert patched["spec"]["containers"][0]["name"] == "app"  # kubectl's default stays the app
    # 1.27 does not know native sidecars, and the plain container still validates there.
    validate_strictly(patched, "1.27.0", NEWEST)


async def test_annotations_choose_role_config_map_image_and_resources(injector: Injector) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    pod["metadata"]["annotations"].update(
        {
            "genesys-token-proxy.io/vault-role": "billing",
            "genesys-token-proxy.io/config-map": "proxy-billing",
            "genesys-token-proxy.io/image": "registry.example/gtp:0.2.0",
            "genesys-token-proxy.io/cpu-request": "100m",
            "genesys-token-proxy.io/memory-request": "96Mi",
            "genesys-token-proxy.io/cpu-limit": "1",
            "genesys-token-proxy.io/memory-limit": "256Mi",
        }
    )

    patched = await injector.patched(pod)

    validate_strictly(patched)
    sidecar = sidecar_of(patched)
    assert sidecar["image"] == "registry.example/gtp:0.2.0"
    assert {"name": "GENESYS_PROXY_VAULT_ROLE", "value": "billing"} in sidecar["env"]
    assert sidecar["resources"] == {
        "requests": {"cpu": "100m", "memory": "96Mi"},
        "limits": {"cpu": "1", "memory": "256Mi"},
    }
    config = next(v for v in patched["spec"]["volumes"] if "configMap" in v)
    assert config["configMap"]["name"] == "proxy-billing"


# -- what it leaves alone ---------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public"])
async def test_system_namespaces_get_no_patch(injector: Injector, namespace: str) -> None:
    response = await injector.review(pod_from_deployment(EXAMPLE_INJECTED), namespace=namespace)

    assert response["allowed"] is True
    assert "patch" not in response


async def test_extra_excluded_namespaces_get_no_patch(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    runner, port, _ = await start_injector(tls, excluded_namespaces=frozenset({"payments"}))
    client_tls = ssl.create_default_context(cafile=str(tls.ca))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as s:
            client = Injector(f"https://127.0.0.1:{port}", s, None, tls)  # type: ignore[arg-type]
            pod = pod_from_deployment(EXAMPLE_INJECTED)
            assert "patch" not in await client.review(pod, namespace="payments")
            assert "patch" in await client.review(pod, namespace="genesys-demo")
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("value", ["false", "False", None])
async def test_pods_that_opt_out_or_do_not_ask_get_no_patch(
    injector: Injector, value: str | None
) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    if value is None:
        del pod["metadata"]["annotations"][INJECT]
    else:
        pod["metadata"]["annotations"][INJECT] = value

    response = await injector.review(pod)

    assert response["allowed"] is True
    assert "patch" not in response


async def test_an_unclear_inject_value_is_allowed_unchanged_with_a_warning(
    injector: Injector,
) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    pod["metadata"]["annotations"][INJECT] = "yes"

    response = await injector.review(pod)

    assert response["allowed"] is True
    assert "patch" not in response
    assert INJECT in response["warnings"][0]


async def test_pod_that_already_carries_the_sidecar_gets_no_patch_and_a_warning(
    injector: Injector,
) -> None:
    pod = pod_from_deployment(EXAMPLE_HAND_WRITTEN)
    pod["metadata"]["annotations"][INJECT] = "true"

    response = await injector.review(pod)

    assert response["allowed"] is True
    assert "patch" not in response
    assert "already has a container" in response["warnings"][0]


async def test_a_pod_whose_grace_period_is_shorter_than_the_proxys_drain_gets_a_warning(
    injector: Injector,
) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 21  # the example leaves room
    assert "warnings" not in await injector.review(pod)
    pod["spec"]["terminationGracePeriodSeconds"] = 10

    response = await injector.review(pod)

    assert response["allowed"] is True
    assert "patch" in response  # injected all the same: the owner may know better
    assert "terminationGracePeriodSeconds (10)" in response["warnings"][0]


@pytest.mark.parametrize(
    ("operation", "kind", "resource"),
    [("UPDATE", "Pod", "pods"), ("CREATE", "Deployment", "deployments")],
)
async def test_anything_but_a_pod_creation_is_allowed_unchanged(
    injector: Injector, operation: str, kind: str, resource: str
) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)

    response = await injector.review(pod, operation=operation, kind=kind, resource=resource)

    assert response == {"uid": response["uid"], "allowed": True}


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("genesys-token-proxy.io/memory-request", "lots"),
        ("genesys-token-proxy.io/cpu-limit", "1 core"),
        ("genesys-token-proxy.io/config-map", "Not_A_Name"),
        ("genesys-token-proxy.io/sidecar", "sidecar"),
        ("genesys-token-proxy.io/image", ""),
    ],
)
async def test_a_bad_annotation_denies_the_pod_naming_the_annotation(
    injector: Injector, annotation: str, value: str
) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    pod["metadata"]["annotations"][annotation] = value

    response = await injector.review(pod)

    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert annotation in response["status"]["message"]
    assert "patch" not in response


async def test_a_volume_name_clash_denies_the_pod(injector: Injector) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    pod["spec"]["volumes"] = [{"name": "genesys-token-proxy-config", "emptyDir": {}}]

    response = await injector.review(pod)

    assert response["allowed"] is False
    assert "genesys-token-proxy-config" in response["status"]["message"]


async def test_a_non_json_body_is_a_400_with_a_message(injector: Injector) -> None:
    async with injector.session.post(f"{injector.url}/mutate", data=b"{not json") as response:
        assert response.status == 400
        body = await response.json()
    assert body == {"error": "bad_request", "message": "the body is not JSON"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "not a JSON object"),
        ({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}, "expected"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "no request"),
        (
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}},
            "no uid",
        ),
    ],
)
async def test_a_malformed_review_gets_a_clear_error_not_a_crash(
    injector: Injector, body: Any, message: str
) -> None:
    async with injector.session.post(f"{injector.url}/mutate", json=body) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["response"]["allowed"] is False
    assert message in answer["response"]["status"]["message"]
    async with injector.session.get(f"{injector.url}/healthz") as response:
        assert response.status == 200  # still serving


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda pod: pod["spec"].pop("containers"), "no spec.containers"),
        (lambda pod: pod.update(spec="nonsense"), "no spec.containers"),
        (lambda pod: pod["spec"].update(volumes="nonsense"), "spec.volumes is not a list"),
        (lambda pod: pod["spec"].update(initContainers={}), "spec.initContainers is not a list"),
    ],
)
async def test_a_mangled_pod_that_asks_for_the_sidecar_is_denied_not_crashed(
    injector: Injector, mangle: Any, message: str
) -> None:
    pod = pod_from_deployment(EXAMPLE_INJECTED)
    mangle(pod)

    response = await injector.review(pod)

    assert response["allowed"] is False
    assert message in response["status"]["message"]


async def test_a_pod_object_that_is_not_an_object_is_allowed_unchanged(injector: Injector) -> None:
    response = await injector.review("not a pod")

    assert response == {"uid": response["uid"], "allowed": True}


# -- JSON Pointer and TLS ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "escaped"),
    [
        ("genesys-token-proxy.io/status", "genesys-token-proxy.io~1status"),
        ("a~b", "a~0b"),
        ("~1", "~01"),  # '~' first, or '~1' would turn into '/'
        ("a/~/b", "a~1~0~1b"),
    ],
)
def test_json_pointer_segments_are_escaped_per_rfc_6901(segment: str, escaped: str) -> None:
    assert escape_pointer(segment) == escaped
    document = {"annotations": {segment: "x"}}
    assert jsonpatch.JsonPointer("/annotations/" + escaped).resolve(document) == "x"


async def _served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        return int(writer.get_extra_info("peercert")["serialNumber"], 16)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    from cryptography import x509

    tls = make_tls_files(tmp_path)
    runner, port, certificate = await start_injector(tls)
    try:
        old_serial = await _served_serial(port, tls.ca)
        assert certificate.reload_if_changed() is False  # nothing changed yet

        renewed = make_tls_files(tmp_path, prefix="renewed")
        tls.cert.write_bytes(renewed.cert.read_bytes())
        # A half-written pair (new cert, old key) is refused; the old certificate stays.
        assert certificate.reload_if_changed() is False
        assert await _served_serial(port, tls.ca) == old_serial
        tls.key.write_bytes(renewed.key.read_bytes())
        assert certificate.reload_if_changed() is True

        new_serial = await _served_serial(port, renewed.ca)
        expected = x509.load_pem_x509_certificate(renewed.cert.read_bytes()).serial_number
        assert new_serial == expected != old_serial
    finally:
        await runner.cleanup()


def test_options_for_a_pod_do_not_change_the_defaults() -> None:
    defaults = SidecarOptions(image=IMAGE)
    before = copy.deepcopy(defaults)

    defaults.for_pod({"genesys-token-proxy.io/vault-role": "other"})

    assert defaults == before
