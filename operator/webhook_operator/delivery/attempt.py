"""One signed HTTP POST to one webhook, and what came of it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from webhook_operator.delivery.transport import BlockedDestinationError
from webhook_operator.index import WebhookState
from webhook_operator.model import now
from webhook_operator.retry import FAILURE_BLOCKED, FAILURE_ERROR, FAILURE_TIMEOUT, is_success, parse_retry_after
from webhook_operator.signing import signature_headers

RESPONSE_BODY_LIMIT = 1024


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    failure: str | None  # timeout | error | blocked, when no HTTP status came back
    error: str
    duration_s: float
    response_body: str
    retry_after: float | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and is_success(self.status_code)


def _short_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if "certificate" in lowered or "ssl" in lowered:
        return f"TLS error: {text}"[:200]
    return text[:200]


async def send(
    client: httpx.AsyncClient, state: WebhookState, body: bytes, msg_id: str, *, timeout_s: float
) -> AttemptResult:
    """POST ``body`` to the webhook; never raises for anything the endpoint or network does."""
    headers = {"content-type": "application/json"}
    headers.update(state.headers)
    headers.update(signature_headers(state.keys, msg_id, int(time.time()), body))
    started = time.perf_counter()
    try:
        async with client.stream("POST", state.spec.url, content=body, headers=headers, timeout=timeout_s) as response:
            chunks = bytearray()
            async for chunk in response.aiter_raw():
                chunks += chunk
                if len(chunks) >= RESPONSE_BODY_LIMIT:
                    break
            duration = time.perf_counter() - started
            code = response.status_code
            error = "" if is_success(code) else f"HTTP {code}"
            if 300 <= code < 400:
                error = f"HTTP {code} (redirects are not followed)"
            return AttemptResult(
                status_code=code,
                failure=None,
                error=error,
                duration_s=duration,
                response_body=bytes(chunks[:RESPONSE_BODY_LIMIT]).decode("utf-8", errors="replace"),
                retry_after=parse_retry_after(response.headers.get("retry-after"), now()),
            )
    except BlockedDestinationError as exc:
        return AttemptResult(
            None, FAILURE_BLOCKED, str(exc)[:300] or "blocked destination", time.perf_counter() - started, "", None
        )
    except httpx.TimeoutException:
        return AttemptResult(
            None, FAILURE_TIMEOUT, f"timeout after {timeout_s:g}s", time.perf_counter() - started, "", None
        )
    except (httpx.HTTPError, OSError) as exc:
        return AttemptResult(None, FAILURE_ERROR, _short_error(exc), time.perf_counter() - started, "", None)
