"""Which API errors are transient, the backoff between tries, and the wrapper that retries them."""

from __future__ import annotations

import random

import pytest
from aiohttp import web

from webhook_operator.apiretry import CAP_S, backoff_delay, is_transient, with_retries
from webhook_operator.kube import ApiError, Credentials, KubeClient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ApiError(500, "InternalError", "etcd"), True),
        (ApiError(503, "ServiceUnavailable", ""), True),
        (ApiError(504, "Timeout", ""), True),
        (ApiError(429, "TooManyRequests", "storage is (re)initializing"), True),
        (ApiError(408, "Timeout", ""), True),
        (ApiError(409, "Conflict", "the object has been modified"), True),
        (ApiError(409, "AlreadyExists", 'secrets "x" already exists'), False),
        (ApiError(400, "BadRequest", ""), False),
        (ApiError(403, "Forbidden", ""), False),
        (ApiError(404, "NotFound", ""), False),
        (ApiError(422, "Invalid", ""), False),
        (ConnectionError("connection refused"), True),
        (TimeoutError(), True),
        (ValueError("a bug"), False),
    ],
)
def test_errors_are_classified_by_status(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_the_wait_doubles_from_the_base_within_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for failures, step in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 30.0), (500, 30.0)]:
        delay = backoff_delay(failures, rng=rng)
        assert step * 0.5 <= delay <= step, (failures, delay)


def test_retry_after_lengthens_the_wait_but_not_past_the_cap() -> None:
    assert backoff_delay(1, retry_after=7, rng=random.Random(1)) == 7
    assert backoff_delay(1, retry_after=3600, rng=random.Random(1)) == CAP_S
    assert backoff_delay(1, retry_after=0, rng=random.Random(1)) <= 0.5


async def test_transient_errors_are_retried_until_the_call_succeeds() -> None:
    waits: list[float] = []
    errors = [ApiError(503, "ServiceUnavailable", ""), ApiError(429, "TooManyRequests", "", retry_after=2), OSError()]

    async def op() -> str:
        if errors:
            raise errors.pop(0)
        return "done"

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    assert await with_retries(op, what="reading", sleep=sleep) == "done"
    assert len(waits) == 3 and waits[1] == 2


async def test_a_permanent_error_is_raised_at_once() -> None:
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise ApiError(403, "Forbidden", "")

    with pytest.raises(ApiError):
        await with_retries(op, what="writing", sleep=_no_wait)
    assert calls == 1


async def test_attempts_and_give_up_bound_the_retries() -> None:
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise ApiError(503, "ServiceUnavailable", "")

    with pytest.raises(ApiError):
        await with_retries(op, what="writing", attempts=4, sleep=_no_wait)
    assert calls == 4
    calls = 0
    with pytest.raises(ApiError):
        await with_retries(op, what="writing", give_up=lambda: calls >= 2, sleep=_no_wait)
    assert calls == 2


async def _no_wait(seconds: float) -> None:
    return None


async def test_a_real_api_answer_429_with_retry_after_is_waited_out_then_retried() -> None:
    """A plain-HTTP stand-in for the API server: 429 + Retry-After, then 503, then the object."""
    answers = [
        web.json_response({"kind": "Status", "reason": "TooManyRequests"}, status=429, headers={"Retry-After": "2"}),
        web.json_response({"kind": "Status", "reason": "ServiceUnavailable"}, status=503),
        web.json_response({"kind": "WebhookEvent", "metadata": {"name": "e1"}}),
    ]

    async def handle(request: web.Request) -> web.Response:
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/apis/x", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    kube = KubeClient(Credentials(f"http://127.0.0.1:{port}", None, True, None, None, None, None, None))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    try:
        with pytest.raises(ApiError) as info:
            await kube.get("/apis/x")
        assert (info.value.status, info.value.retry_after) == (429, 2.0)
        answers.insert(0, web.json_response({"reason": "TooManyRequests"}, status=429, headers={"Retry-After": "2"}))
        body = await with_retries(lambda: kube.get("/apis/x"), what="reading e1", sleep=sleep)
        assert body == {"kind": "WebhookEvent", "metadata": {"name": "e1"}}
        assert waits[0] == 2.0 and len(waits) == 2
    finally:
        await kube.close()
        await runner.cleanup()
