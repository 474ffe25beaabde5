"""The ingress's HTTPS server (aiohttp): path and method, then review, size, parse, publish; errors as JSON."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from webhook_operator.ingress.parse import IngressError, namespace_of, parse_publication
from webhook_operator.ingress.review import Reviewer
from webhook_operator.ingress.sink import EventSink, PublishGate, SinkUnavailable, WebhookEventSink
from webhook_operator.ingress.tls import ReloadingCertificate
from webhook_operator.kube import KubeClient
from webhook_operator.metrics import Metrics
from webhook_operator.settings import Settings

log = logging.getLogger(__name__)

# 64 KiB: a WebhookEvent then stays small beside etcd's 1.5 MiB object limit even after its status
# has recorded a 1 KiB response body for each of dozens of webhooks (see the README).
DEFAULT_MAX_BODY_BYTES = 64 * 1024
# An authorised publisher holds one of the gate's slots while its body arrives; not for ever.
BODY_TIMEOUT_S = 30.0


def _error(exc: IngressError) -> web.Response:
    return web.json_response({"error": exc.message}, status=exc.status, headers=exc.headers)


@dataclass
class Ingress:
    reviewer: Reviewer
    sink: EventSink
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    served_namespaces: frozenset[str] = frozenset()  # empty: every namespace
    on_answer: Callable[[int], None] = lambda status: None
    gate: PublishGate = field(default_factory=PublishGate)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            response = await self._handle(request)
        except IngressError as exc:
            response = _error(exc)
        except SinkUnavailable as exc:
            response = _error(IngressError(503, exc.reason + "; retry later", {"Retry-After": str(exc.retry_after_s)}))
        self.on_answer(response.status)
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        namespace = namespace_of(request.path)
        if namespace is None:
            raise IngressError(404, "not found: publish with POST /v1/namespaces/<namespace>/events")
        if request.method != "POST":
            raise IngressError(405, "only POST is allowed here", {"Allow": "POST"})
        async with self.gate.enter():
            await self.reviewer.authorize(request.headers.get("Authorization"), namespace)
            # After the review, so that a caller who may not publish there learns nothing of what is served.
            if self.served_namespaces and namespace not in self.served_namespaces:
                raise IngressError(404, f'namespace "{namespace}" is not served by this operator')
            body = await self._read_body(request)
            publication = parse_publication(request.headers, body)
            event_id = await self.sink.publish(namespace, publication.event, publication.data, publication.event_id)
        return web.json_response({"eventId": event_id}, status=202)

    async def _read_body(self, request: web.Request) -> bytes:
        too_large = IngressError(413, f"the request body is larger than {self.max_body_bytes} bytes")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise too_large
        # read(n) returns what has arrived so far (up to n bytes), not n bytes: read until the end.
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                while chunk := await request.content.read(self.max_body_bytes + 1 - len(body)):
                    body += chunk
                    if len(body) > self.max_body_bytes:
                        raise too_large
        except TimeoutError:
            raise IngressError(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s") from None
        return bytes(body)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@dataclass
class IngressServer:
    ingress: Ingress
    certificate: ReloadingCertificate
    host: str
    port: int
    _runner: web.AppRunner | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def start(self) -> None:
        # No access log: the request line is all it would add, and publishers are counted elsewhere.
        self._runner = web.AppRunner(self.ingress.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.certificate.context)
        await site.start()
        self._tasks.append(asyncio.create_task(self.certificate.watch(), name="ingress-tls-reload"))
        log.info("ingress: serving HTTPS on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        self.certificate.close()


def make_ingress_server(
    settings: Settings, kube: KubeClient, metrics: Metrics, sink: EventSink | None = None
) -> IngressServer:
    """Reviews with the operator's API client; events to ``sink`` (bus mode), else WebhookEvents (CR mode);
    certificate from files or self-signed."""
    ingress = Ingress(
        Reviewer(kube, on_review=lambda kind: metrics.ingress_reviews.labels(kind).inc()),
        sink or WebhookEventSink(kube),
        max_body_bytes=settings.ingress_max_body_bytes,
        served_namespaces=frozenset(settings.namespaces),
        on_answer=lambda status: metrics.ingress_requests.labels(str(status)).inc(),
    )
    certificate = ReloadingCertificate(settings.ingress_tls_cert, settings.ingress_tls_key)
    return IngressServer(ingress, certificate, settings.bind_address, settings.ingress_port)
