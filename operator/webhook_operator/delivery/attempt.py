"""One signed HTTP POST to one webhook, and what came of it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from webhook_operator.delivery.transport import (
    BlockedDestinationError,
    DeliveryClient,
    DeliveryConnectError,
    DeliveryTimeout,
)
from webhook_operator.index import WebhookState
from webhook_operator.model import now
from webhook_operator.retry import FAILURE_BLOCKED, FAILURE_ERROR, FAILURE_TIMEOUT, is_success, parse_retry_after
from webhook_operator.signing import signature_headers


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    failure: str | None  # timeout | error | blocked, when no HTTP status came back
    error: str
    duration_s: float
    response_body: str
    retry_after: float | None
    sent_at: float = 0.0  # wall clock (time.time()) when the request went out; 0 when unknown

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and is_success(self.status_code)


async def send(
    client: DeliveryClient, state: WebhookState, body: bytes, msg_id: str, *, timeout_s: float
) -> AttemptResult:
    """POST ``body`` to the webhook; never raises for anything the endpoint or network does."""
    headers = {"content-type": "application/json"}
    headers.update(state.headers)
    sent_at = time.time()
    headers.update(signature_headers(state.keys, msg_id, int(sent_at), body))
    started = time.perf_counter()
    try:
        response = await client.post(state.spec.url, body, headers, timeout_s=timeout_s, tls=state.tls)
    except BlockedDestinationError as exc:
        return AttemptResult(
            None,
            FAILURE_BLOCKED,
            str(exc)[:300] or "blocked destination",
            time.perf_counter() - started,
            "",
            None,
            sent_at,
        )
    except DeliveryTimeout:
        return AttemptResult(
            None, FAILURE_TIMEOUT, f"timeout after {timeout_s:g}s", time.perf_counter() - started, "", None, sent_at
        )
    except DeliveryConnectError as exc:
        return AttemptResult(None, FAILURE_ERROR, exc.short, time.perf_counter() - started, "", None, sent_at)
    duration = time.perf_counter() - started
    code = response.status
    error = "" if is_success(code) else f"HTTP {code}"
    if 300 <= code < 400:
        error = f"HTTP {code} (redirects are not followed)"
    retry_after = response.headers.get("retry-after")
    return AttemptResult(
        status_code=code,
        failure=None,
        error=error,
        duration_s=duration,
        response_body=response.body.decode("utf-8", errors="replace"),
        retry_after=None if retry_after is None else parse_retry_after(retry_after, now()),
        sent_at=sent_at,
    )
