"""The HTTPS event ingress on the real control plane: real TokenReviews and SubjectAccessReviews for
ServiceAccount tokens, real HTTPS to the operator process, real receivers checking what is delivered."""

from __future__ import annotations

import json
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trustme
import yaml
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from tests.support.kube_helpers import (
    KubectlFn,
    apply,
    get,
    metric_value,
    verify_received,
    wait_event_final,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.operator_process import OperatorProcess, free_port
from tests.support.receiver import Received, Receiver
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

MAX_BODY = 4096


@dataclass
class Env:
    namespace: str
    other: str  # a second namespace, where only `elsewhere` may create WebhookEvents
    operator: OperatorProcess
    receiver: Receiver
    url: str  # the ingress's events URL for `namespace`
    tokens: dict[str, str]  # publisher, stranger, elsewhere
    client: httpx.Client

    def post(self, token: str | None, body: Any = None, *, url: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            kwargs["json"] = body
        return self.client.post(url or self.url, headers=headers, **kwargs)

    def delivered(self, event_id: str) -> list[Received]:
        return [r for r in self.receiver.received() if json.loads(r.body)["eventId"] == event_id]


def rbac(namespace: str, subject_namespace: str, name: str) -> list[dict[str, Any]]:
    """A Role allowing `create webhookevents` in ``namespace`` bound to ServiceAccount ``name``."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": f"publish-{name}", "namespace": namespace},
        "rules": [{"apiGroups": ["webhook-operator.io"], "resources": ["webhookevents"], "verbs": ["create"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"publish-{name}", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"publish-{name}"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": subject_namespace}],
    }
    return [role, binding]


def tls_files(ca: trustme.CA, directory: Path, name: str = "ingress") -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    return cert_path, key_path


def ingress_args(port: int, cert: Path | None, key: Path | None) -> list[str]:
    args = ["--ingress-port", str(port), "--ingress-max-body-bytes", str(MAX_BODY)]
    if cert and key:
        args += ["--ingress-tls-cert", str(cert), "--ingress-tls-key", str(key)]
    return args


def base_args(namespace: str, ca_bundle: Path) -> list[str]:
    # Each operator process its own Lease: in its own namespace and under its own name.
    lease = ["--leader-election-namespace", namespace, "--leader-election-id", f"ingress-{uuid.uuid4().hex[:8]}"]
    return ["--namespace", namespace, "--ca-bundle", str(ca_bundle), "--allow-cidr", "127.0.0.0/8", *lease]


@pytest.fixture(scope="module")
def env(
    cluster: Any, kubectl: KubectlFn, tls_ca: trustme.CA, ca_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:6]
    namespace, other = f"ingress-{suffix}", f"ingress-other-{suffix}"
    for ns in (namespace, other):
        kubectl("create", "namespace", ns)
    for name in ("publisher", "stranger", "elsewhere"):
        kubectl("create", "serviceaccount", name, "-n", namespace)
    for obj in [*rbac(namespace, namespace, "publisher"), *rbac(other, namespace, "elsewhere")]:
        kubectl("apply", "-f", "-", input=json.dumps(obj))
    tokens = {
        name: kubectl("create", "token", name, "-n", namespace, "--duration", "1h").stdout.strip()
        for name in ("publisher", "stranger", "elsewhere")
    }
    tmp = tmp_path_factory.mktemp("ingress")
    cert, key = tls_files(tls_ca, tmp)
    port = free_port()
    receiver = Receiver(tls_ca)
    operator = OperatorProcess(
        cluster.kubeconfig, [*base_args(namespace, ca_bundle), *ingress_args(port, cert, key)], tmp / "operator.log"
    ).start()
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/hook"), ["*"]))
    wait_ready(kubectl, namespace, "hook")
    client = httpx.Client(verify=ssl.create_default_context(cafile=str(ca_bundle)), timeout=30)
    try:
        yield Env(
            namespace,
            other,
            operator,
            receiver,
            f"https://127.0.0.1:{port}/v1/namespaces/{namespace}/events",
            tokens,
            client,
        )
    finally:
        client.close()
        operator.stop()
        receiver.close()
        verify_received(kubectl, namespace, receiver.received())
        for ns in (namespace, other):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)


def event_objects(kubectl: KubectlFn, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(kubectl("get", "webhookevents", "-n", namespace, "-o", "json").stdout)["items"])


def objects_with_event_id(kubectl: KubectlFn, namespace: str, event_id: str) -> list[dict[str, Any]]:
    return [o for o in event_objects(kubectl, namespace) if o["spec"].get("eventId") == event_id]


# -- accepted and delivered ---------------------------------------------------------------------
def test_json_body_is_202_and_delivered_with_the_created_objects_uid(env: Env, kubectl: KubectlFn) -> None:
    response = env.post(env.tokens["publisher"], {"event": "User.Created", "data": {"plan": "pro"}})
    assert response.status_code == 202, response.text
    event_id = response.json()["eventId"]
    (received,) = env.receiver.wait_for(1, "/hook", where=lambda r: json.loads(r.body)["eventId"] == event_id)
    body = json.loads(received.body)
    assert (body["event"], body["data"], body["hookId"]) == ("User.Created", {"plan": "pro"}, f"{env.namespace}/hook")
    uids = [o["metadata"]["uid"] for o in event_objects(kubectl, env.namespace)]
    assert event_id in uids
    (obj,) = [o for o in event_objects(kubectl, env.namespace) if o["metadata"]["uid"] == event_id]
    assert obj["metadata"]["name"].startswith("user-created-") and "eventId" not in obj["spec"]


def test_structured_cloudevent_is_delivered_with_its_id_as_event_id(env: Env, kubectl: KubectlFn) -> None:
    event_id = f"ce-{uuid.uuid4()}"
    message = to_structured_event(
        CloudEvent(
            {"type": "Order.Paid", "source": "/shop", "id": event_id, "datacontenttype": "application/json"},
            {"order": 42},
        )
    )
    response = env.post(env.tokens["publisher"], content=message.body, headers=message.headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"eventId": event_id}
    (received,) = env.receiver.wait_for(1, "/hook", where=lambda r: json.loads(r.body)["eventId"] == event_id)
    assert json.loads(received.body)["data"] == {"order": 42}
    assert json.loads(received.body)["event"] == "Order.Paid"


def test_binary_cloudevent_is_delivered_with_its_id_as_event_id(env: Env) -> None:
    event_id = f"ce-{uuid.uuid4()}"
    message = to_binary_event(
        CloudEvent({"type": "Note.Added", "source": "/notes", "id": event_id, "datacontenttype": "text/plain"}, "hi")
    )
    response = env.post(env.tokens["publisher"], content=message.body, headers=message.headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"eventId": event_id}
    (received,) = env.receiver.wait_for(1, "/hook", where=lambda r: json.loads(r.body)["eventId"] == event_id)
    assert (json.loads(received.body)["event"], json.loads(received.body)["data"]) == ("Note.Added", "hi")


def test_the_same_id_twice_is_one_webhook_event_and_one_delivery(env: Env, kubectl: KubectlFn) -> None:
    event_id = f"ce-{uuid.uuid4()}"
    message = to_binary_event(
        CloudEvent(
            {"type": "Invoice.Sent", "source": "/b", "id": event_id, "datacontenttype": "application/json"}, {"n": 1}
        )
    )
    answers = [env.post(env.tokens["publisher"], content=message.body, headers=message.headers) for _ in range(2)]
    assert [(a.status_code, a.json()) for a in answers] == [(202, {"eventId": event_id})] * 2
    (obj,) = objects_with_event_id(kubectl, env.namespace, event_id)
    wait_event_final(kubectl, env.namespace, obj["metadata"]["name"])
    # A second delivery, had there been one, would start as soon as its object was seen.
    time.sleep(1.0)
    assert len(env.delivered(event_id)) == 1
    assert len(objects_with_event_id(kubectl, env.namespace, event_id)) == 1


def test_idempotency_key_is_the_event_id_and_deduplicates(env: Env, kubectl: KubectlFn) -> None:
    key = f"order-{uuid.uuid4()}"
    for _ in range(2):
        response = env.post(env.tokens["publisher"], {"event": "Order.Shipped"}, headers={"Idempotency-Key": key})
        assert (response.status_code, response.json()) == (202, {"eventId": key})
    env.receiver.wait_for(1, "/hook", where=lambda r: json.loads(r.body)["eventId"] == key)
    assert len(objects_with_event_id(kubectl, env.namespace, key)) == 1


# -- rejected ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "content_type", "says"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"event": "User.*"}', "application/json", "invalid event name"),
        (b'{"data": {}}', "application/json", "event is missing"),
        (b'{"specversion": "1.0", "id": "1", "source": "/s"}', "application/cloudevents+json", "type is missing"),
        (b"event=User.Created", "application/x-www-form-urlencoded", "unsupported content type"),
    ],
)
def test_malformed_requests_are_400_with_what_is_wrong(env: Env, content: bytes, content_type: str, says: str) -> None:
    response = env.post(env.tokens["publisher"], content=content, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert says in response.json()["error"]


def test_no_token_is_401_with_a_bearer_challenge(env: Env) -> None:
    response = env.post(None, {"event": "User.Created"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "bearer token is required" in response.json()["error"]


def test_a_garbage_token_is_401_and_never_logged(env: Env) -> None:
    garbage = f"not-a-token-{uuid.uuid4().hex}"
    response = env.post(garbage, {"event": "User.Created"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert garbage not in env.operator.log()
    assert env.tokens["publisher"] not in env.operator.log()


def test_a_valid_identity_without_the_right_is_403_with_the_reason(env: Env, kubectl: KubectlFn) -> None:
    before = len(event_objects(kubectl, env.namespace))
    response = env.post(env.tokens["stranger"], {"event": "User.Created"})
    assert response.status_code == 403
    message = response.json()["error"]
    assert f"system:serviceaccount:{env.namespace}:stranger may not create webhookevents" in message
    assert len(event_objects(kubectl, env.namespace)) == before


def test_the_right_in_another_namespace_only_is_403_here_and_202_there(env: Env, kubectl: KubectlFn) -> None:
    assert env.post(env.tokens["elsewhere"], {"event": "User.Created"}).status_code == 403
    # The operator serves only `namespace`, so the other one is not found even for whom may publish there.
    there = env.url.replace(f"/namespaces/{env.namespace}/", f"/namespaces/{env.other}/")
    response = env.post(env.tokens["elsewhere"], {"event": "User.Created"}, url=there)
    assert response.status_code == 404 and "not served" in response.json()["error"]


def test_over_the_size_limit_is_413(env: Env) -> None:
    response = env.post(env.tokens["publisher"], {"event": "Big.Thing", "data": "x" * MAX_BODY})
    assert response.status_code == 413
    assert str(MAX_BODY) in response.json()["error"]


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        time.sleep(0.01)  # separate TCP segments, so the server sees the body arrive in pieces
        yield data[start : start + size]


def test_a_chunked_body_is_read_whole_and_limited_all_the_same(env: Env) -> None:
    event = {"event": "Big.Thing", "data": "y" * (MAX_BODY - 100)}
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    response = env.post(env.tokens["publisher"], content=chunks(body, 512), headers=headers)
    assert response.status_code == 202, response.text
    event_id = response.json()["eventId"]
    (received,) = env.receiver.wait_for(1, "/hook", where=lambda r: json.loads(r.body)["eventId"] == event_id)
    assert json.loads(received.body)["data"] == event["data"]
    too_big = json.dumps({"event": "Big.Thing", "data": "y" * MAX_BODY}).encode()
    response = env.post(env.tokens["publisher"], content=chunks(too_big, 512), headers=headers)
    assert response.status_code == 413


def test_other_paths_are_404_and_other_methods_405(env: Env) -> None:
    base = env.url.split("/v1/")[0]
    assert env.client.get(f"{base}/").status_code == 404
    assert env.client.post(f"{base}/v1/events").status_code == 404
    response = env.client.get(env.url, headers={"Authorization": f"Bearer {env.tokens['publisher']}"})
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


def reviews(env: Env) -> float:
    text = env.operator.metrics()
    return sum(metric_value(text, "webhook_operator_ingress_reviews_total", review=k) or 0 for k in ("token", "access"))


def test_reviews_are_cached_so_repeated_requests_cost_no_more_api_calls(env: Env) -> None:
    for who, code in (("stranger", 403), ("publisher", 202)):
        token = env.tokens[who]
        assert env.post(token, {"event": "Cache.Warmed"}).status_code == code
        before = reviews(env)
        answers = [env.post(token, {"event": "Cache.Warmed"}) for _ in range(10)]
        assert {a.status_code for a in answers} == {code}
        # A review expiring between the first request and these costs at most one TokenReview and one SAR.
        assert reviews(env) - before <= 2, who
    text = env.operator.metrics()
    assert (metric_value(text, "webhook_operator_ingress_requests_total", code="403") or 0) >= 11


# -- the certificate --------------------------------------------------------------------------
def served_certificate(port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    import socket

    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_rotated_certificate_is_served_without_a_restart(
    cluster: Any, kubectl: KubectlFn, namespace: str, ca_bundle: Path, tmp_path: Path
) -> None:
    first_ca, second_ca = trustme.CA(), trustme.CA()
    cert, key = tls_files(first_ca, tmp_path)
    port = free_port()
    operator = OperatorProcess(
        cluster.kubeconfig, [*base_args(namespace, ca_bundle), *ingress_args(port, cert, key)], tmp_path / "op.log"
    ).start()
    try:
        before = served_certificate(port)
        # A mounted Secret rotates by swapping a symlink; new files under the same names is what the reader sees.
        new_cert, new_key = tls_files(second_ca, tmp_path, "next")
        new_key.replace(key)
        new_cert.replace(cert)
        wait_until(lambda: served_certificate(port) != before, timeout=30, what="the new certificate to be served")
        context = ssl.create_default_context()
        second_ca.configure_trust(context)
        with httpx.Client(verify=context) as client:
            response = client.post(f"https://127.0.0.1:{port}/v1/namespaces/{namespace}/events", json={"event": "A.B"})
        assert response.status_code == 401  # TLS verified with the new CA; the request reached the ingress
        assert "TLS certificate reloaded" in operator.log()
    finally:
        operator.stop()


def test_dev_mode_serves_a_self_signed_certificate(
    cluster: Any, kubectl: KubectlFn, namespace: str, ca_bundle: Path, tmp_path: Path
) -> None:
    port = free_port()
    operator = OperatorProcess(
        cluster.kubeconfig, [*base_args(namespace, ca_bundle), "--dev", *ingress_args(port, None, None)], tmp_path / "l"
    ).start()
    try:
        match = re.search(r"self-signed certificate \(--dev\) at (\S+)", operator.log())
        assert match, operator.log()[-2000:]
        context = ssl.create_default_context(cafile=match.group(1))
        with httpx.Client(verify=context) as client:
            response = client.post(f"https://localhost:{port}/v1/namespaces/{namespace}/events", json={"event": "A.B"})
        assert response.status_code == 401
    finally:
        operator.stop()


# -- the API server unreachable ------------------------------------------------------------------
def proxied_kubeconfig(original: Path, port: int, directory: Path) -> Path:
    config = yaml.safe_load(original.read_text())
    for cluster in config["clusters"]:
        server = urlsplit(cluster["cluster"]["server"])
        cluster["cluster"]["server"] = f"https://{server.hostname}:{port}"
    for section, key_names in (
        ("clusters", ("cluster", ("certificate-authority",))),
        ("users", ("user", ("client-certificate", "client-key", "tokenFile"))),
    ):
        inner, names = key_names
        for entry in config.get(section) or ():
            for name in names:
                value = entry[inner].get(name)
                if value and not Path(value).is_absolute():
                    entry[inner][name] = str((original.parent / value).resolve())
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def api_target(kubeconfig: Path) -> tuple[str, int]:
    server = urlsplit(yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"])
    assert server.hostname and server.port
    return server.hostname, server.port


def test_503_with_retry_after_while_the_api_server_is_unreachable(
    cluster: Any, kubectl: KubectlFn, namespace: str, ca_bundle: Path, tls_ca: trustme.CA, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "publisher", "-n", namespace)
    for obj in rbac(namespace, namespace, "publisher"):
        kubectl("apply", "-f", "-", input=json.dumps(obj))
    token = kubectl("create", "token", "publisher", "-n", namespace).stdout.strip()
    proxy = TcpProxy(api_target(cluster.kubeconfig))
    cert, key = tls_files(tls_ca, tmp_path)
    port = free_port()
    operator = OperatorProcess(
        proxied_kubeconfig(cluster.kubeconfig, proxy.port, tmp_path),
        [*base_args(namespace, ca_bundle), *ingress_args(port, cert, key)],
        tmp_path / "op.log",
    ).start()
    url = f"https://127.0.0.1:{port}/v1/namespaces/{namespace}/events"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_bundle)), timeout=30) as client:
            assert client.post(url, json={"event": "A.B"}, headers=headers).status_code == 202
            proxy.cut()
            # The token's reviews are cached: this one fails at the sink, creating the WebhookEvent.
            response = client.post(url, json={"event": "A.B"}, headers=headers)
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
            assert "unreachable" in response.json()["error"]
            # Another token needs a review, which fails the same way.
            response = client.post(url, json={"event": "A.B"}, headers={"Authorization": "Bearer other"})
            assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
            proxy.restore()
            wait_until(
                lambda: client.post(url, json={"event": "A.C"}, headers=headers).status_code == 202,
                timeout=30,
                what="publishing to work again once the API server is reachable",
            )
        names = [o["spec"]["event"] for o in event_objects(kubectl, namespace)]
        assert sorted(set(names)) == ["A.B", "A.C"] and names.count("A.B") == 1
        assert token not in operator.log()
    finally:
        operator.stop()
        proxy.close()


def test_an_invalid_event_id_is_refused_by_the_crd_with_what_is_accepted(kubectl: KubectlFn, namespace: str) -> None:
    manifest = {
        "apiVersion": "webhook-operator.io/v1alpha1",
        "kind": "WebhookEvent",
        "metadata": {"name": "bad-id"},
        "spec": {"event": "A.B", "eventId": "has a space"},
    }
    result = kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert "spec.eventId must be 1 to 128 visible ASCII characters" in result.stderr
    manifest["spec"]["eventId"] = "x" * 129
    result = kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0 and "128" in result.stderr
    manifest["spec"]["eventId"] = "order-42/ok"
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    assert get(kubectl, namespace, "webhookevent/bad-id")["spec"]["eventId"] == "order-42/ok"
