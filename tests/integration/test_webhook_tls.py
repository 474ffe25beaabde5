"""spec.tls on the real control plane: a receiver with its own CA, an mTLS receiver that requires a
client certificate, Secret rotation without a restart, and missing or invalid Secrets."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from tests.conftest import KubectlFn
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    Manifest,
    apply,
    condition,
    get,
    secret_manifest,
    send_event,
    wait_for_condition,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration


def tls_secret(name: str, leaf: trustme.LeafCert) -> Manifest:
    """A kubernetes.io/tls Secret, as `kubectl create secret tls` makes it."""
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name},
        "data": {
            "tls.crt": base64.b64encode(chain).decode(),
            "tls.key": base64.b64encode(leaf.private_key_pem.bytes()).decode(),
        },
    }


@pytest.fixture
def own_ca() -> trustme.CA:
    """A CA the operator does not trust (it is not in --ca-bundle)."""
    return trustme.CA()


@pytest.fixture
def own_ca_receiver(own_ca: trustme.CA) -> Iterator[Receiver]:
    server = Receiver(own_ca)
    yield server
    server.close()


@pytest.fixture
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def mtls_receiver(tls_ca: trustme.CA, client_ca: trustme.CA) -> Iterator[Receiver]:
    """Serves with a certificate of the test CA (trusted through --ca-bundle); requires a client
    certificate of ``client_ca``."""
    server = Receiver(tls_ca, client_ca=client_ca)
    yield server
    server.close()


def only_delivery(event: Manifest) -> dict[str, Any]:
    deliveries = event["status"]["deliveries"]
    assert len(deliveries) == 1, deliveries
    return dict(deliveries[0])


def test_receiver_with_its_own_ca_fails_verification_until_the_ca_secret_is_referenced(
    kubectl: KubectlFn, namespace: str, own_ca: trustme.CA, own_ca_receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    fast_fail = {"maxRetries": 0, "backoffSeconds": 0.2, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
    apply(kubectl, namespace, webhook_manifest("own-ca", own_ca_receiver.url("/own"), retry=fast_fail))
    wait_ready(kubectl, namespace, "own-ca")
    failed = only_delivery(send_event(kubectl, namespace, "User.Created", {"n": 1}))
    assert failed["outcome"] == "Failed"
    assert "certificate verify failed" in failed["error"]
    assert own_ca_receiver.received() == []

    apply(kubectl, namespace, secret_manifest("hooks-ca", {"ca.crt": own_ca.cert_pem.bytes().decode()}))
    apply(
        kubectl,
        namespace,
        webhook_manifest(
            "own-ca", own_ca_receiver.url("/own"), retry=fast_fail, tls={"caSecretRef": {"name": "hooks-ca"}}
        ),
    )
    wait_ready(kubectl, namespace, "own-ca")
    delivered = only_delivery(send_event(kubectl, namespace, "User.Created", {"n": 2}))
    assert delivered["outcome"] == "Succeeded", delivered
    assert json.loads(own_ca_receiver.wait_for(1, "/own")[0].body)["data"] == {"n": 2}


def test_mtls_receiver_gets_the_client_certificate_and_a_rotated_secret_applies_without_restart(
    kubectl: KubectlFn,
    namespace: str,
    client_ca: trustme.CA,
    mtls_receiver: Receiver,
    start_operator: StartOperator,
) -> None:
    operator = start_operator(namespace)
    tls = {"clientCertSecretRef": {"name": "hooks-client"}}
    apply(kubectl, namespace, webhook_manifest("mtls", mtls_receiver.url("/m"), tls=tls))
    missing = wait_for_condition(kubectl, namespace, "webhook/mtls", "Ready", "False", reason="TLSSecretMissing")
    message = condition(missing, "Ready")["message"]  # type: ignore[index]
    assert "spec.tls.clientCertSecretRef" in message and f"{namespace}/hooks-client" in message
    assert condition(missing, "Stalled")["status"] == "True"  # type: ignore[index]

    first = client_ca.issue_cert("client-one.example")
    apply(kubectl, namespace, tls_secret("hooks-client", first))
    wait_ready(kubectl, namespace, "mtls")
    assert only_delivery(send_event(kubectl, namespace, "User.Created"))["outcome"] == "Succeeded"
    assert mtls_receiver.wait_for(1, "/m")[0].client_cert == "client-one.example"

    # Rotation: the Secret watch reconciles the webhook; new connections present the new certificate.
    second = client_ca.issue_cert("client-two.example")
    apply(kubectl, namespace, tls_secret("hooks-client", second))

    def presented_second() -> bool:
        send_event(kubectl, namespace, "User.Created")
        return mtls_receiver.received("/m")[-1].client_cert == "client-two.example"

    wait_until(presented_second, timeout=30, interval=0.5, what="a delivery with the rotated client certificate")
    assert operator.running
    key_pems = [leaf.private_key_pem.bytes().decode() for leaf in (first, second)]
    key_lines = [pem.splitlines()[1] for pem in key_pems]
    webhook_text = json.dumps(get(kubectl, namespace, "webhook/mtls"))
    events_text = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    for line in key_lines:
        assert line not in operator.log()
        assert line not in webhook_text
        assert line not in events_text
        assert line not in operator.metrics()


def test_without_a_client_certificate_the_mtls_receiver_refuses_the_handshake(
    kubectl: KubectlFn, namespace: str, mtls_receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    fast_fail = {"maxRetries": 0, "backoffSeconds": 0.2, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
    apply(kubectl, namespace, webhook_manifest("plain", mtls_receiver.url("/p"), retry=fast_fail))
    wait_ready(kubectl, namespace, "plain")
    failed = only_delivery(send_event(kubectl, namespace, "User.Created"))
    assert failed["outcome"] == "Failed"
    assert mtls_receiver.received() == []


@pytest.mark.parametrize(
    ("secret", "tls", "reason", "words"),
    [
        pytest.param(
            secret_manifest("hooks-client", {"tls.crt": "x", "tls.key": "y"}),
            {"clientCertSecretRef": {"name": "hooks-client"}},
            "TLSSecretInvalid",
            "has type 'Opaque', not 'kubernetes.io/tls'",
            id="client-secret-not-tls-type",
        ),
        pytest.param(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": "hooks-client"},
                "data": {"tls.crt": base64.b64encode(b"not a certificate").decode(), "tls.key": ""},
            },
            {"clientCertSecretRef": {"name": "hooks-client"}},
            "TLSSecretInvalid",
            "has no tls.key",
            id="client-secret-without-key",
        ),
        pytest.param(
            secret_manifest("hooks-ca", {"ca.crt": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"}),
            {"caSecretRef": {"name": "hooks-ca"}},
            "TLSSecretInvalid",
            "key 'ca.crt': not a PEM CA certificate",
            id="ca-not-pem",
        ),
        pytest.param(
            secret_manifest("hooks-ca", {"other": "x"}),
            {"caSecretRef": {"name": "hooks-ca", "key": "bundle.pem"}},
            "TLSSecretMissing",
            "key 'bundle.pem' of Secret",
            id="ca-key-missing",
        ),
    ],
)
def test_unusable_tls_secret_is_not_ready_with_a_message_naming_secret_and_key(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    secret: Manifest,
    tls: Manifest,
    reason: str,
    words: str,
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, secret)
    apply(kubectl, namespace, webhook_manifest("bad-tls", receiver.url("/b"), tls=tls))
    obj = wait_for_condition(kubectl, namespace, "webhook/bad-tls", "Ready", "False", reason=reason)
    message = condition(obj, "Ready")["message"]  # type: ignore[index]
    assert words in message
    assert secret["metadata"]["name"] in message
