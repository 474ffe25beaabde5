"""Per-webhook TLS in the delivery client against real HTTPS receivers on 127.0.0.1 (trustme):
a session per TLS configuration, shared and released; material checked without leaking it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import trustme

from tests.support.loops import event_loop_policy  # noqa: F401  (both loops)
from tests.support.receiver import Receiver
from webhook_operator.delivery import transport
from webhook_operator.delivery.transport import (
    DeliveryConnectError,
    TLSMaterial,
    TLSMaterialError,
    check_tls_material,
    make_client,
)
from webhook_operator.policy import DestinationPolicy

LOOPBACK_ALLOWED = DestinationPolicy.from_strings(["127.0.0.0/8"])


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def mtls(server_ca: trustme.CA, client_ca: trustme.CA) -> Iterator[Receiver]:
    server = Receiver(server_ca, client_ca=client_ca)
    yield server
    server.close()


def material(server_ca: trustme.CA, leaf: trustme.LeafCert | None) -> TLSMaterial:
    return TLSMaterial(
        ca_pem=server_ca.cert_pem.bytes().decode(),
        cert_pem=b"".join(p.bytes() for p in leaf.cert_chain_pems).decode() if leaf else None,
        key_pem=leaf.private_key_pem.bytes().decode() if leaf else None,
    )


async def test_same_material_shares_one_session_and_rotated_material_gets_its_own(
    server_ca: trustme.CA, client_ca: trustme.CA, mtls: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = material(server_ca, client_ca.issue_cert("one.example"))
    two = material(server_ca, client_ca.issue_cert("two.example"))
    async with make_client(policy=LOOPBACK_ALLOWED, user_agent="t") as client:
        for _ in range(2):
            assert (await client.post(mtls.url(), b"{}", {}, tls=one)).status == 200
        assert client.tls_pools == 1
        assert [r.client_cert for r in mtls.received()] == ["one.example", "one.example"]
        monkeypatch.setattr(transport, "TLS_POOL_IDLE_SECONDS", 0.0)
        assert (await client.post(mtls.url(), b"{}", {}, tls=two)).status == 200
        assert mtls.received()[-1].client_cert == "two.example"
        assert client.tls_pools == 1  # the idle session of the old material was closed


async def test_without_the_webhooks_ca_or_client_certificate_the_handshake_fails(
    server_ca: trustme.CA, client_ca: trustme.CA, mtls: Receiver
) -> None:
    async with make_client(policy=LOOPBACK_ALLOWED, user_agent="t") as client:
        with pytest.raises(DeliveryConnectError, match="certificate verify failed"):
            await client.post(mtls.url(), b"{}", {})
        with pytest.raises(DeliveryConnectError):
            await client.post(mtls.url(), b"{}", {}, tls=material(server_ca, None))
    assert mtls.received() == []


def test_unusable_material_is_refused_without_quoting_it(server_ca: trustme.CA, client_ca: trustme.CA) -> None:
    leaf = client_ca.issue_cert("one.example")
    other = client_ca.issue_cert("two.example")
    mismatched = TLSMaterial(
        cert_pem=leaf.cert_chain_pems[0].bytes().decode(), key_pem=other.private_key_pem.bytes().decode()
    )
    with pytest.raises(TLSMaterialError) as caught:
        check_tls_material(mismatched)
    assert caught.value.which == "cert"
    assert "BEGIN" not in str(caught.value)
    with pytest.raises(TLSMaterialError, match="not a PEM CA certificate"):
        check_tls_material(TLSMaterial(ca_pem="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
    assert "BEGIN" not in repr(mismatched)


async def test_concurrent_first_attempts_build_one_session(
    server_ca: trustme.CA, client_ca: trustme.CA, mtls: Receiver
) -> None:
    one = material(server_ca, client_ca.issue_cert("one.example"))
    async with make_client(policy=LOOPBACK_ALLOWED, user_agent="t") as client:
        answers = await asyncio.gather(*(client.post(mtls.url(), b"{}", {}, tls=one) for _ in range(5)))
        assert [a.status for a in answers] == [200] * 5
        assert client.tls_pools == 1
