"""The delivery client against real HTTPS receivers on 127.0.0.1 with trustme certificates.

Names like `receiver.test` cannot be registered here, so an injected resolver stands in for DNS;
it is the only DNS the client has, which also proves nothing resolves the name a second time.
These run on the stock event loop only: the receiver here starts TLS on an accepted connection, and
uvloop may read the client's first bytes before that. test_http1 and test_transport_tls run the client
on both loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from webhook_operator.delivery.transport import (
    BlockedDestinationError,
    DeliveryClient,
    DeliveryConnectError,
    DeliveryTimeout,
    make_client,
)
from webhook_operator.policy import DestinationPolicy, IPAddress, allowed_addresses, system_resolve

USER_AGENT = "webhook-operator/0.0.0-test"
LOOPBACK_ALLOWED = DestinationPolicy.from_strings(["127.0.0.0/8"])


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A small HTTP/1.1 server on 127.0.0.1 that records what reaches it, optionally behind TLS."""

    cert: trustme.LeafCert | None
    status: int = 200
    extra_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    connections: int = 0
    tls_failures: int = 0
    sni: list[str | None] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _tls_context(self) -> ssl.SSLContext:
        assert self.cert is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)

        def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self.sni.append(name)

        context.sni_callback = record_sni
        return context

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        # Counted before TLS, so a refused handshake still shows that a TCP connection was made.
        self.connections += 1
        try:
            if self.cert is not None:
                try:
                    await writer.start_tls(self._tls_context())
                except (ssl.SSLError, OSError, asyncio.IncompleteReadError):
                    self.tls_failures += 1
                    return
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _version = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Seen(method, target, headers, body))
                response_headers = {"content-length": str(len(self.body)), **self.extra_headers}
                writer.write(
                    f"HTTP/1.1 {self.status} Status\r\n".encode()
                    + "".join(f"{k}: {v}\r\n" for k, v in response_headers.items()).encode()
                    + b"\r\n"
                    + self.body
                )
                await writer.drain()
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


StartReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def start_receiver(ca: trustme.CA) -> AsyncIterator[StartReceiver]:
    started: list[Receiver] = []

    async def start(
        *names: str, tls: bool = True, status: int = 200, extra_headers: dict[str, str] | None = None
    ) -> Receiver:
        cert = ca.issue_cert(*names) if tls else None
        receiver = Receiver(cert=cert, status=status, extra_headers=extra_headers or {})
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


class FakeDNS:
    """The only DNS the client sees in these tests; counts lookups."""

    def __init__(self, *answers: list[str]) -> None:
        # Successive lookups get successive answers (the last one repeats), to model rebinding.
        self.answers = [[ipaddress.ip_address(a) for a in answer] for answer in answers]
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        if host != "receiver.test" or not self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


@contextlib.asynccontextmanager
async def client_for(
    policy: DestinationPolicy, resolve: FakeDNS | None = None, ca_bundle: str | None = None
) -> AsyncIterator[DeliveryClient]:
    client = make_client(
        policy=policy,
        ca_bundle=ca_bundle,
        resolve=resolve if resolve is not None else system_resolve,
        user_agent=USER_AGENT,
    )
    try:
        yield client
    finally:
        await client.aclose()


# --- the happy path ----------------------------------------------------------------------


async def test_request_arrives_with_hostname_in_host_and_sni(start_receiver: StartReceiver, ca_bundle: str) -> None:
    receiver = await start_receiver("receiver.test")
    dns = FakeDNS(["127.0.0.1"])
    async with client_for(LOOPBACK_ALLOWED, dns, ca_bundle) as client:
        response = await client.post(
            f"https://receiver.test:{receiver.port}/hooks/identity?x=1",
            b'{"event":"User.Created"}',
            {"content-type": "application/json", "x-team": "billing"},
        )
    assert response.status == 200
    assert response.body == b"ok"
    assert receiver.sni == ["receiver.test"]
    [seen] = receiver.requests
    assert seen.method == "POST"
    assert seen.target == "/hooks/identity?x=1"
    assert seen.headers["host"] == f"receiver.test:{receiver.port}"
    assert seen.headers["user-agent"] == USER_AGENT
    assert seen.headers["x-team"] == "billing"
    assert seen.body == b'{"event":"User.Created"}'
    assert dns.lookups == ["receiver.test"]


async def test_keep_alive_reuses_one_connection(start_receiver: StartReceiver, ca_bundle: str) -> None:
    receiver = await start_receiver("receiver.test")
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["127.0.0.1"]), ca_bundle) as client:
        for _ in range(3):
            assert (await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})).status == 200
    assert len(receiver.requests) == 3
    assert receiver.connections == 1


async def test_localhost_via_the_system_resolver_in_dev_mode(start_receiver: StartReceiver, ca_bundle: str) -> None:
    receiver = await start_receiver("localhost")
    dev = DestinationPolicy.from_strings(["127.0.0.0/8", "::1/128"])
    async with client_for(dev, None, ca_bundle) as client:
        response = await client.post(f"https://localhost:{receiver.port}/", b"{}", {})
    assert response.status == 200
    assert receiver.sni == ["localhost"]
    assert receiver.requests[0].headers["host"] == f"localhost:{receiver.port}"


async def test_ip_literal_url_is_dialled_without_any_lookup(start_receiver: StartReceiver, ca_bundle: str) -> None:
    receiver = await start_receiver("127.0.0.1")
    dns = FakeDNS()
    async with client_for(LOOPBACK_ALLOWED, dns, ca_bundle) as client:
        response = await client.post(f"https://127.0.0.1:{receiver.port}/", b"{}", {})
    assert response.status == 200
    assert dns.lookups == []
    assert receiver.requests[0].headers["host"] == f"127.0.0.1:{receiver.port}"


async def test_plain_http_goes_through_the_same_guard(start_receiver: StartReceiver) -> None:
    receiver = await start_receiver(tls=False)
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["127.0.0.1"])) as client:
        response = await client.post(f"http://receiver.test:{receiver.port}/", b"{}", {})
    assert response.status == 200
    async with client_for(DestinationPolicy(), FakeDNS(["127.0.0.1"])) as client:
        with pytest.raises(BlockedDestinationError):
            await client.post(f"http://receiver.test:{receiver.port}/", b"{}", {})
    assert receiver.connections == 1


# --- the destination policy at connect time ----------------------------------------------


async def test_loopback_without_allow_cidr_is_blocked_before_any_connection(
    start_receiver: StartReceiver, ca_bundle: str
) -> None:
    receiver = await start_receiver("receiver.test")
    async with client_for(DestinationPolicy(), FakeDNS(["127.0.0.1"]), ca_bundle) as client:
        with pytest.raises(BlockedDestinationError) as info:
            await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})
    error = info.value
    assert error.reason == "BlockedDestination"
    assert "receiver.test" in error.message
    assert "127.0.0.1 (loopback)" in error.message
    assert "--allow-cidr" in error.message
    assert str(error) == error.message
    assert receiver.connections == 0


async def test_blocked_ip_literal_is_never_dialled(start_receiver: StartReceiver, ca_bundle: str) -> None:
    receiver = await start_receiver("127.0.0.1")
    async with client_for(DestinationPolicy(), FakeDNS(), ca_bundle) as client:
        with pytest.raises(BlockedDestinationError):
            await client.post(f"https://127.0.0.1:{receiver.port}/", b"{}", {})
    assert receiver.connections == 0


async def test_rebinding_to_a_blocked_address_after_the_check_is_caught_at_connect(
    start_receiver: StartReceiver, ca_bundle: str
) -> None:
    receiver = await start_receiver("receiver.test")
    # The name looked public when the Webhook was reconciled, then its DNS answer changed.
    dns = FakeDNS(["93.184.216.34"], ["127.0.0.1"])
    reconcile_check = await allowed_addresses("receiver.test", receiver.port, DestinationPolicy(), dns)
    assert reconcile_check == [ipaddress.ip_address("93.184.216.34")]
    async with client_for(DestinationPolicy(), dns, ca_bundle) as client:
        with pytest.raises(BlockedDestinationError, match=r"127\.0\.0\.1 \(loopback\)"):
            await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})
    assert receiver.connections == 0


async def test_metadata_address_is_blocked_even_with_loopback_allowed(
    start_receiver: StartReceiver, ca_bundle: str
) -> None:
    receiver = await start_receiver("receiver.test")
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["169.254.169.254"]), ca_bundle) as client:
        with pytest.raises(BlockedDestinationError, match="cloud metadata"):
            await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})
    assert receiver.connections == 0


async def test_of_blocked_and_allowed_answers_only_the_allowed_reach_the_dialler(
    start_receiver: StartReceiver, ca_bundle: str
) -> None:
    receiver = await start_receiver("receiver.test")
    # 10.0.0.1 is blocked, so never dialled: were it dialled, nothing answers there and the attempt
    # would have to time out or fail before 127.0.0.1 is tried.
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["10.0.0.1", "169.254.169.254", "127.0.0.1"]), ca_bundle) as client:
        response = await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})
    assert response.status == 200
    assert receiver.sni == ["receiver.test"]
    assert receiver.connections == 1


async def test_an_allowed_address_that_refuses_falls_through_to_the_next(
    start_receiver: StartReceiver, ca_bundle: str
) -> None:
    receiver = await start_receiver("receiver.test")
    # Nothing listens on 127.0.0.2, so that dial is refused and the next address is tried.
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["127.0.0.2", "127.0.0.1"]), ca_bundle) as client:
        response = await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})
    assert response.status == 200
    assert receiver.connections == 1


async def test_when_every_allowed_address_refuses_it_is_a_connect_error(ca_bundle: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["127.0.0.1", "127.0.0.2"]), ca_bundle) as client:
        with pytest.raises(DeliveryConnectError) as info:
            await client.post(f"https://receiver.test:{closed_port}/", b"{}", {})
    assert not isinstance(info.value, BlockedDestinationError)
    assert str(info.value) == f"cannot connect to receiver.test port {closed_port}: connection refused"


async def test_a_name_that_does_not_resolve_is_a_retryable_connect_error(start_receiver: StartReceiver) -> None:
    receiver = await start_receiver("receiver.test")
    async with client_for(LOOPBACK_ALLOWED, FakeDNS()) as client:
        with pytest.raises(DeliveryConnectError, match=r"cannot resolve host receiver\.test"):
            await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})
    assert receiver.connections == 0


async def test_a_slow_lookup_is_bounded_by_the_attempt_timeout() -> None:
    class SlowDNS(FakeDNS):
        async def __call__(self, host: str, port: int) -> list[IPAddress]:
            await asyncio.sleep(30)
            return []

    async with client_for(LOOPBACK_ALLOWED, SlowDNS()) as client:
        with pytest.raises(DeliveryTimeout, match=r"timeout after 0\.2s"):
            await client.post("https://receiver.test:443/", b"{}", {}, timeout_s=0.2)


# --- TLS -----------------------------------------------------------------------------------


async def test_a_certificate_for_another_name_fails_verification(start_receiver: StartReceiver, ca_bundle: str) -> None:
    receiver = await start_receiver("other.test")
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["127.0.0.1"]), ca_bundle) as client:
        with pytest.raises(DeliveryConnectError, match=r"TLS error: .*CERTIFICATE_VERIFY_FAILED"):
            await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})
    assert receiver.connections == 1
    assert receiver.requests == []


async def test_without_the_ca_bundle_a_private_ca_is_not_trusted(start_receiver: StartReceiver) -> None:
    receiver = await start_receiver("receiver.test")
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["127.0.0.1"]), None) as client:
        with pytest.raises(DeliveryConnectError, match=r"TLS error: .*CERTIFICATE_VERIFY_FAILED"):
            await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})
    assert receiver.requests == []


def test_a_missing_ca_bundle_file_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        make_client(policy=DestinationPolicy(), ca_bundle=str(tmp_path / "missing.pem"), user_agent=USER_AGENT)


# --- HTTP behaviour --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_returned_not_followed(start_receiver: StartReceiver, ca_bundle: str, status: int) -> None:
    receiver = await start_receiver("receiver.test", status=status, extra_headers={"location": "/elsewhere"})
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["127.0.0.1"]), ca_bundle) as client:
        response = await client.post(f"https://receiver.test:{receiver.port}/hook", b"{}", {})
    assert response.status == status
    assert response.headers["location"] == "/elsewhere"
    assert [seen.target for seen in receiver.requests] == ["/hook"]


async def test_proxy_environment_variables_are_ignored(
    start_receiver: StartReceiver, ca_bundle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await start_receiver("receiver.test")
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["127.0.0.1"]), ca_bundle) as client:
        response = await client.post(f"https://receiver.test:{receiver.port}/", b"{}", {})
    assert response.status == 200
    assert len(receiver.requests) == 1


async def test_a_malformed_response_is_reported_without_the_url_path_or_query(
    start_receiver: StartReceiver, ca_bundle: str
) -> None:
    receiver = await start_receiver("receiver.test", extra_headers={"content-length": "not-a-number"})
    url = f"https://receiver.test:{receiver.port}/SECRET-PATH?token=SECRET-QUERY"
    async with client_for(LOOPBACK_ALLOWED, FakeDNS(["127.0.0.1"]), ca_bundle) as client:
        with pytest.raises(DeliveryConnectError) as info:
            await client.post(url, b"{}", {})
    assert receiver.requests, "the request reached the receiver"
    assert "SECRET" not in str(info.value), str(info.value)
