"""The pure parts of the delivery engine (folding attempts into status entries, resuming and redelivering
events) and one attempt against a real HTTPS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from standardwebhooks import Webhook as StandardWebhook

from tests.support.receiver import Receiver, Reply
from webhook_operator.delivery.attempt import AttemptResult, send
from webhook_operator.delivery.engine import NOT_READY, DeliveryEngine, format_time_precise, waiting_reason
from webhook_operator.delivery.retention import Due
from webhook_operator.delivery.transport import RESPONSE_BODY_LIMIT, DeliveryClient, make_client
from webhook_operator.index import WebhookIndex, WebhookState
from webhook_operator.kube import Credentials, KubeClient
from webhook_operator.metrics import Metrics
from webhook_operator.model import REDELIVER_ANNOTATION, WebhookSpec, now, parse_time
from webhook_operator.policy import DestinationPolicy, parse_url
from webhook_operator.retry import FAILURE_BLOCKED, FAILURE_ERROR, FAILURE_TIMEOUT, RetryPolicy
from webhook_operator.settings import Settings
from webhook_operator.signing import logto_signature, standard_webhooks_secret

KEY = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"
OLD_KEY = "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4"
USER_AGENT = "webhook-operator/0.0.0-test"
LOOPBACK = DestinationPolicy.from_strings(["127.0.0.0/8"])
BODY = (
    b'{"hookId":"shop/hook","event":"User.Created","createdAt":"2026-11-28T03:00:00.000Z","eventId":"e1","data":null}'
)


def webhook(
    url: str = "https://127.0.0.1:1/hook",
    *,
    retry: RetryPolicy | None = None,
    keys: tuple[str, ...] = (KEY,),
    headers: tuple[tuple[str, str], ...] = (),
) -> WebhookState:
    return WebhookState(
        namespace="shop",
        name="hook",
        uid="w-uid",
        generation=1,
        spec=WebhookSpec(url=url, events=("User.Created",), retry=retry or RetryPolicy(max_retries=2)),
        body={},
        ready=True,
        keys=keys,
        headers=headers,
    )


def result(
    status: int | None = 200,
    *,
    failure: str | None = None,
    error: str = "",
    body: str = "ok",
    retry_after: float | None = None,
) -> AttemptResult:
    return AttemptResult(status, failure, error, 0.0421, body, retry_after)


def seconds_until(stamp: str) -> float:
    due = parse_time(stamp)
    assert due is not None
    return (due - now()).total_seconds()


# -- folding one attempt into the delivery entry -------------------------------------------------
def test_success_is_final_and_records_the_response() -> None:
    entry: dict[str, Any] = {"webhook": "hook", "id": "msg_1", "outcome": "Pending", "attempts": 0}

    final = DeliveryEngine._apply(entry, result(200, body="thanks"), webhook())

    assert final is True
    assert entry["outcome"] == "Succeeded" and entry["attempts"] == 1
    assert entry["statusCode"] == 200 and entry["error"] == "" and entry["responseBody"] == "thanks"
    assert entry["durationMs"] == 42
    assert entry["firstAttemptTime"] == entry["lastAttemptTime"]
    assert "nextAttemptTime" not in entry
    assert entry["id"] == "msg_1"


def test_retryable_failure_with_attempts_left_is_retrying_with_a_due_time() -> None:
    entry: dict[str, Any] = {"webhook": "hook", "id": "msg_1", "attempts": 0}
    state = webhook(retry=RetryPolicy(max_retries=2, backoff_seconds=10, max_backoff_seconds=60))

    final = DeliveryEngine._apply(entry, result(503, error="HTTP 503"), state)

    assert final is False
    assert entry["outcome"] == "Retrying" and entry["attempts"] == 1 and entry["statusCode"] == 503
    # Equal jitter: between half and all of the 10 s first step.
    assert 4.5 <= seconds_until(entry["nextAttemptTime"]) <= 10.1


def test_the_last_allowed_attempt_is_final_failed() -> None:
    entry: dict[str, Any] = {"webhook": "hook", "id": "msg_1", "outcome": "Retrying", "attempts": 2}
    entry["nextAttemptTime"] = format_time_precise(0)

    final = DeliveryEngine._apply(entry, result(500, error="HTTP 500"), webhook(retry=RetryPolicy(max_retries=2)))

    assert final is True
    assert entry["outcome"] == "Failed" and entry["attempts"] == 3 and entry["error"] == "HTTP 500"
    assert "nextAttemptTime" not in entry


@pytest.mark.parametrize("status", [400, 401, 404, 302])
def test_client_errors_and_redirects_fail_at_once(status: int) -> None:
    entry: dict[str, Any] = {"webhook": "hook", "id": "msg_1", "attempts": 0}

    assert DeliveryEngine._apply(entry, result(status, error=f"HTTP {status}"), webhook()) is True
    assert entry["outcome"] == "Failed" and entry["attempts"] == 1


def test_blocked_destination_is_not_retried() -> None:
    entry: dict[str, Any] = {"webhook": "hook", "id": "msg_1", "attempts": 0}
    blocked = result(None, failure=FAILURE_BLOCKED, error="blocked destination: ...", body="")

    assert DeliveryEngine._apply(entry, blocked, webhook()) is True
    assert entry["outcome"] == "Failed" and "statusCode" not in entry


def test_timeout_is_retried_and_drops_the_previous_status_code() -> None:
    entry: dict[str, Any] = {"webhook": "hook", "id": "msg_1", "attempts": 1, "statusCode": 503}

    final = DeliveryEngine._apply(entry, result(None, failure=FAILURE_TIMEOUT, error="timeout after 1s"), webhook())

    assert final is False
    assert entry["outcome"] == "Retrying" and entry["error"] == "timeout after 1s"
    assert "statusCode" not in entry


def test_first_attempt_time_is_kept_across_attempts() -> None:
    entry: dict[str, Any] = {
        "webhook": "hook",
        "id": "msg_1",
        "attempts": 1,
        "firstAttemptTime": "2026-01-01T00:00:00Z",
    }

    DeliveryEngine._apply(entry, result(None, failure=FAILURE_ERROR, error="connection refused"), webhook())

    assert entry["firstAttemptTime"] == "2026-01-01T00:00:00Z"
    assert entry["lastAttemptTime"] > entry["firstAttemptTime"]


def test_retry_after_lengthens_the_wait() -> None:
    entry: dict[str, Any] = {"webhook": "hook", "id": "msg_1", "attempts": 0}
    state = webhook(retry=RetryPolicy(max_retries=3, backoff_seconds=0.1, max_backoff_seconds=60))

    DeliveryEngine._apply(entry, result(429, error="HTTP 429", retry_after=30), state)

    assert 29 <= seconds_until(entry["nextAttemptTime"]) <= 30.1


def test_retry_after_is_capped_at_max_backoff() -> None:
    entry: dict[str, Any] = {"webhook": "hook", "id": "msg_1", "attempts": 0}
    state = webhook(retry=RetryPolicy(max_retries=3, backoff_seconds=0.1, max_backoff_seconds=5))

    DeliveryEngine._apply(entry, result(503, error="HTTP 503", retry_after=3600), state)

    assert seconds_until(entry["nextAttemptTime"]) <= 5.1


def test_due_times_keep_milliseconds_so_short_backoffs_survive_a_restart() -> None:
    stamp = format_time_precise(0.25)

    assert stamp.endswith("Z") and len(stamp.split(".")[1]) == 4
    assert 0.1 <= seconds_until(stamp) <= 0.26


# -- resuming and redelivering events -----------------------------------------------------------
@pytest.fixture
async def engine() -> AsyncIterator[DeliveryEngine]:
    """An engine whose API and HTTP clients are never used by the code under test."""
    credentials = Credentials("https://127.0.0.1:1", None, True, None, None, None, None, None)
    kube = KubeClient(credentials)
    client = make_client(policy=LOOPBACK, user_agent=USER_AGENT)
    yield DeliveryEngine(Settings(), kube, WebhookIndex(), Metrics(), client, lambda *_: None)
    await client.aclose()
    await kube.close()


UID = "0b6f0c3e-4a8e-4d55-9a59-3f5a1f0e2c11"


def event_body(status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "shop",
            "name": "user-created-x7",
            "uid": "0b6f0c3e-4a8e-4d55-9a59-3f5a1f0e2c11",
            "creationTimestamp": "2026-11-28T03:00:00Z",
            "annotations": annotations or {},
        },
        "spec": {"event": "User.Created", "data": {"id": "u1"}},
        "status": status or {},
    }


FAILED = {
    "webhook": "bad",
    "id": "msg_bad",
    "outcome": "Failed",
    "attempts": 4,
    "statusCode": 500,
    "error": "HTTP 500",
    "responseBody": "broken",
    "durationMs": 12,
    "firstAttemptTime": "2026-11-28T03:00:00Z",
    "lastAttemptTime": "2026-11-28T03:00:07Z",
}
SUCCEEDED = {"webhook": "good", "id": "msg_good", "outcome": "Succeeded", "attempts": 1, "statusCode": 200}


async def test_a_new_event_becomes_a_job_with_the_contract_created_at(engine: DeliveryEngine) -> None:
    job = engine._job_from(event_body())

    assert job.created_at == "2026-11-28T03:00:00.000Z"
    assert (job.event, job.data, job.uid) == ("User.Created", {"id": "u1"}, "0b6f0c3e-4a8e-4d55-9a59-3f5a1f0e2c11")
    assert job.deliveries == [] and job.redelivery is None


async def test_a_resumed_event_keeps_its_recorded_entries(engine: DeliveryEngine) -> None:
    retrying = {**FAILED, "outcome": "Retrying", "attempts": 1, "nextAttemptTime": "2026-11-28T03:00:01.500Z"}

    job = engine._job_from(event_body({"phase": "Delivering", "deliveries": [retrying, SUCCEEDED]}))

    assert job.deliveries == [retrying, SUCCEEDED]


async def test_redelivery_starts_failed_entries_over_and_leaves_succeeded_ones(engine: DeliveryEngine) -> None:
    body = event_body({"phase": "PartiallyFailed", "deliveries": [FAILED, SUCCEEDED]})

    job = engine._job_from(body, redeliver="r1")

    bad, good = job.deliveries
    assert bad == {"webhook": "bad", "id": "msg_bad", "outcome": "Pending", "attempts": 0}
    assert good == SUCCEEDED
    assert job.redelivery is not None and job.redelivery["requestedAt"] == "r1" and job.redelivery["startedAt"]
    assert FAILED["attempts"] == 4, "the body read from the API must not be changed"


async def test_a_final_event_whose_redelivery_was_handled_starts_nothing(engine: DeliveryEngine) -> None:
    status = {"phase": "Failed", "deliveries": [FAILED], "redelivery": {"requestedAt": "r1"}}

    await engine.on_event("MODIFIED", event_body(status, {REDELIVER_ANNOTATION: "r1"}))
    await engine.on_event("MODIFIED", event_body({"phase": "Delivered", "deliveries": [SUCCEEDED]}))

    assert engine.active_jobs == 0


async def test_completed_events_seen_at_startup_are_queued_for_expiry(engine: DeliveryEngine) -> None:
    status = {"phase": "Delivered", "deliveries": [SUCCEEDED], "completionTime": "2026-11-28T03:00:09Z"}

    await engine.on_event(None, event_body(status))

    completed = dt.datetime(2026, 11, 28, 3, 0, 9, tzinfo=dt.UTC).timestamp()
    assert engine.retention.deadline_of(UID) == completed + Settings().event_ttl_s
    assert engine.retention.pop_due(completed + Settings().event_ttl_s) == Due(UID, "shop", "user-created-x7")


async def test_failed_events_are_kept_for_the_failed_event_ttl(engine: DeliveryEngine) -> None:
    status = {"phase": "PartiallyFailed", "deliveries": [FAILED, SUCCEEDED], "completionTime": "2026-11-28T03:00:09Z"}

    await engine.on_event(None, event_body(status))

    completed = dt.datetime(2026, 11, 28, 3, 0, 9, tzinfo=dt.UTC).timestamp()
    assert engine.retention.deadline_of(UID) == completed + Settings().failed_event_ttl_s


async def test_a_relist_does_not_add_expiry_entries_for_events_already_planned(engine: DeliveryEngine) -> None:
    status = {"phase": "Delivered", "deliveries": [SUCCEEDED], "completionTime": "2026-11-28T03:00:09Z"}

    for _ in range(5):  # the list at start-up, then one relist after each 410 Gone
        await engine.on_event(None, event_body(status))

    assert engine.retention.heap_size == 1
    assert engine.retention.counted("shop") == 1


async def test_a_deleted_event_is_neither_deleted_again_nor_counted(engine: DeliveryEngine) -> None:
    status = {"phase": "Delivered", "deliveries": [SUCCEEDED], "completionTime": "2026-11-28T03:00:09Z"}
    await engine.on_event(None, event_body(status))

    await engine.on_event("DELETED", event_body(status))

    assert engine.retention.deadline_of(UID) is None and engine.retention.counted("shop") == 0
    assert engine.retention.pop_due(float("inf")) is None


async def test_a_redelivered_event_leaves_the_completed_count(engine: DeliveryEngine) -> None:
    status = {"phase": "Failed", "deliveries": [FAILED], "completionTime": "2026-11-28T03:00:09Z"}
    await engine.on_event(None, event_body(status))

    await engine.on_event("MODIFIED", event_body(status, {REDELIVER_ANNOTATION: "r1"}))

    assert engine.retention.counted("shop") == 0 and engine.retention.deadline_of(UID) is None
    assert engine.active_jobs == 1


# -- one attempt against a real HTTPS server -----------------------------------------------------
@pytest.fixture
async def client(ca_bundle: Path) -> AsyncIterator[DeliveryClient]:
    client = make_client(policy=LOOPBACK, ca_bundle=str(ca_bundle), user_agent=USER_AGENT)
    yield client
    await client.aclose()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_2xx_attempt_sends_signed_headers_and_reads_the_response(
    client: DeliveryClient, receiver: Receiver
) -> None:
    receiver.script("/hook", Reply(202, b"queued"))
    state = webhook(receiver.url("/hook"), headers=(("X-Team", "billing"),))

    outcome = await send(client, state, BODY, "msg_1", timeout_s=5)

    assert outcome.succeeded and outcome.status_code == 202 and outcome.failure is None
    assert (outcome.error, outcome.response_body) == ("", "queued")
    assert 0 < outcome.duration_s < 5
    (request,) = receiver.received("/hook")
    assert request.body == BODY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["x-team"] == "billing"
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["logto-signature-sha-256"] == logto_signature(KEY, BODY)
    assert StandardWebhook(standard_webhooks_secret(KEY)).verify(request.body, request.headers) == json.loads(BODY)


async def test_an_attempt_knows_when_its_request_went_out(client: DeliveryClient, receiver: Receiver) -> None:
    """The request log orders attempts by this time, not by when each answer was taken up."""
    receiver.script("/hook", Reply(200, delay_s=0.3))
    before = time.time()

    outcome = await send(client, webhook(receiver.url("/hook")), BODY, "msg_1", timeout_s=5)

    (request,) = receiver.received("/hook")
    assert before <= outcome.sent_at <= request.at <= outcome.sent_at + outcome.duration_s
    assert int(request.headers["webhook-timestamp"]) == int(outcome.sent_at)
    timed_out = await send(client, webhook(receiver.url("/hook")), BODY, "msg_2", timeout_s=0.1)
    assert timed_out.failure == FAILURE_TIMEOUT and outcome.sent_at < timed_out.sent_at <= time.time() - 0.1


async def test_during_a_key_rotation_both_keys_sign(client: DeliveryClient, receiver: Receiver) -> None:
    state = webhook(receiver.url("/hook"), keys=(KEY, OLD_KEY))

    await send(client, state, BODY, "msg_1", timeout_s=5)

    (request,) = receiver.received("/hook")
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for key in (KEY, OLD_KEY):
        StandardWebhook(standard_webhooks_secret(key)).verify(request.body, request.headers)
    assert request.headers["logto-signature-sha-256"] == logto_signature(KEY, BODY)


async def test_a_503_reports_the_code_and_retry_after(client: DeliveryClient, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(503, b"busy", {"Retry-After": "7"}))

    outcome = await send(client, webhook(receiver.url("/hook")), BODY, "msg_1", timeout_s=5)

    assert not outcome.succeeded
    assert (outcome.status_code, outcome.error, outcome.retry_after, outcome.response_body) == (
        503,
        "HTTP 503",
        7.0,
        "busy",
    )


async def test_a_redirect_is_reported_and_not_followed(client: DeliveryClient, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(302, b"", {"Location": receiver.url("/elsewhere")}))

    outcome = await send(client, webhook(receiver.url("/hook")), BODY, "msg_1", timeout_s=5)

    assert outcome.status_code == 302 and "redirects are not followed" in outcome.error
    assert receiver.received("/elsewhere") == []


async def test_only_the_first_kib_of_the_response_is_kept(client: DeliveryClient, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(200, b"x" * 10_000))

    outcome = await send(client, webhook(receiver.url("/hook")), BODY, "msg_1", timeout_s=5)

    assert outcome.response_body == "x" * RESPONSE_BODY_LIMIT and RESPONSE_BODY_LIMIT == 1024


async def test_a_slow_endpoint_is_a_timeout(client: DeliveryClient, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(200, delay_s=2))

    outcome = await send(client, webhook(receiver.url("/hook")), BODY, "msg_1", timeout_s=0.5)

    assert (outcome.status_code, outcome.failure, outcome.error) == (None, FAILURE_TIMEOUT, "timeout after 0.5s")
    assert 0.4 <= outcome.duration_s < 1.9


async def test_a_closed_port_is_connection_refused(client: DeliveryClient) -> None:
    outcome = await send(client, webhook(f"https://127.0.0.1:{closed_port()}/hook"), BODY, "msg_1", timeout_s=5)

    assert (outcome.status_code, outcome.failure, outcome.error) == (None, FAILURE_ERROR, "connection refused")


async def test_a_blocked_destination_is_never_dialled(ca_bundle: Path, receiver: Receiver) -> None:
    async with make_client(policy=DestinationPolicy(), ca_bundle=str(ca_bundle), user_agent=USER_AGENT) as strict:
        outcome = await send(strict, webhook(receiver.url("/hook")), BODY, "msg_1", timeout_s=5)

    assert outcome.failure == FAILURE_BLOCKED and outcome.error.startswith("blocked destination")
    assert receiver.received() == []


async def test_an_untrusted_certificate_is_a_tls_error(receiver: Receiver) -> None:
    async with make_client(policy=LOOPBACK, user_agent=USER_AGENT) as no_test_ca:
        outcome = await send(no_test_ca, webhook(receiver.url("/hook")), BODY, "msg_1", timeout_s=5)

    assert outcome.failure == FAILURE_ERROR and outcome.error.startswith("TLS error")
    assert receiver.received() == []


async def test_a_stale_watch_event_does_not_restart_an_event_that_just_finished(engine: DeliveryEngine) -> None:
    job = engine._job_from(event_body())
    job.final_written = True
    engine._remember_finished(job)
    stale = event_body({"phase": "Delivering", "deliveries": [dict(SUCCEEDED, outcome="Retrying")]})
    # resourceVersions are opaque: neither an "older" nor a "newer" looking one may decide.
    for version in ("119", "121", "not-a-number"):
        stale["metadata"]["resourceVersion"] = version
        await engine.on_event("MODIFIED", stale)
    assert engine.active_jobs == 0, "a status older than our last write must not start a job"


async def test_a_redelivery_requested_while_the_event_runs_is_answered_after_it(
    engine: DeliveryEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request arrives while a job runs; the fresh read afterwards carries our own last write."""
    reads: list[str] = []
    final = {"phase": "Failed", "deliveries": [FAILED], "redelivery": {"requestedAt": "r1"}}
    fresh = event_body(final, {REDELIVER_ANNOTATION: "r2"})
    fresh["metadata"]["resourceVersion"] = "57"

    async def get(path: str) -> dict[str, Any]:
        reads.append(path)
        return fresh

    monkeypatch.setattr(engine.kube, "get", get)
    job = engine._job_from(event_body({"phase": "Failed", "deliveries": [FAILED]}), redeliver="r1")
    engine._jobs[job.uid] = job
    await engine.on_event("MODIFIED", event_body(final, {REDELIVER_ANNOTATION: "r2"}))
    assert job.next_redelivery == "r2"
    # The job ends: its final write is remembered, then the request is answered from a fresh read.
    engine._jobs.pop(job.uid)
    job.final_written = True
    engine._remember_finished(job)
    engine._redeliver_fresh(job.namespace, job.name, job.uid)
    await wait_for(lambda: engine.active_jobs == 1)
    (started,) = engine._jobs.values()
    assert started.redelivery is not None and started.redelivery["requestedAt"] == "r2"
    assert len(reads) == 1


async def test_a_redelivery_request_seen_late_in_an_old_version_is_still_answered(
    engine: DeliveryEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch delivers the annotated version after our final write (which it predates)."""
    fresh = event_body({"phase": "Failed", "deliveries": [FAILED]}, {REDELIVER_ANNOTATION: "r1"})

    async def get(path: str) -> dict[str, Any]:
        return fresh

    monkeypatch.setattr(engine.kube, "get", get)
    job = engine._job_from(event_body())
    job.final_written = True
    engine._remember_finished(job)
    old = event_body(
        {"phase": "Delivering", "deliveries": [dict(FAILED, outcome="Retrying")]}, {REDELIVER_ANNOTATION: "r1"}
    )
    await engine.on_event("MODIFIED", old)
    await wait_for(lambda: engine.active_jobs == 1)
    # Its echo (status.redelivery answered) starts nothing more.
    (started,) = engine._jobs.values()
    engine._jobs.clear()
    started.final_written = True
    engine._remember_finished(started)
    answered = event_body(
        {"phase": "Failed", "deliveries": [FAILED], "redelivery": {"requestedAt": "r1"}}, {REDELIVER_ANNOTATION: "r1"}
    )
    await engine.on_event("MODIFIED", old)
    await engine.on_event("MODIFIED", answered)
    await asyncio.sleep(0.05)
    assert engine.active_jobs == 0


async def wait_for(predicate: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + 2.0
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_only_a_deleted_or_disabled_webhook_ends_a_delivery() -> None:
    ready = webhook_state()
    not_ready = webhook_state(ready=False)
    resolving = webhook_state(ready=False, resolving=True)
    disabled = webhook_state(enabled=False)
    assert waiting_reason(ready) is None
    assert waiting_reason(not_ready) == NOT_READY
    assert waiting_reason(resolving) == NOT_READY
    assert waiting_reason(disabled) == "webhook disabled"
    assert waiting_reason(None) == "webhook deleted"


def webhook_state(*, ready: bool = True, enabled: bool = True, resolving: bool = False) -> WebhookState:
    url = "https://127.0.0.1:1/hook"
    return WebhookState(
        namespace="shop",
        name="hook",
        uid="w-uid",
        generation=1,
        spec=WebhookSpec(url=url, events=("User.Created",), enabled=enabled),
        body={},
        ready=ready,
        url=parse_url(url, allow_http=False),
        keys=(KEY,),
        resolving=resolving,
    )


async def test_an_attempt_ending_after_its_webhook_was_deleted_leaves_its_series_gone(
    engine: DeliveryEngine, ca_bundle: Path, receiver: Receiver
) -> None:
    engine.client = make_client(policy=LOOPBACK, ca_bundle=str(ca_bundle), user_agent=USER_AGENT)
    receiver.script("/hook", Reply(200, delay_s=0.5))
    state = webhook(receiver.url("/hook"))
    state.url = parse_url(receiver.url("/hook"), allow_http=False)
    state.limiter = asyncio.Semaphore(1)
    engine.index.put(state)
    engine.metrics.webhook_state("shop", "hook", enabled=True, ready=True)
    job = engine._job_from(event_body())
    entry = {"webhook": "hook", "id": "msg_1", "outcome": "Pending", "attempts": 0}
    attempt = asyncio.ensure_future(engine._attempt(job, entry, state))
    await asyncio.sleep(0.2)  # the request is at the receiver, which answers after 0.5 s
    engine.index.remove("shop", "hook")  # what the DELETED watch event does
    engine.metrics.remove_webhook("shop", "hook")
    outcome = await attempt
    await engine.client.aclose()

    assert outcome.status_code == 200
    exposed = generate_latest(engine.metrics.registry).decode()
    assert 'webhook="hook"' not in exposed, exposed


def test_a_webhook_resolving_after_an_api_error_still_subscribes_and_a_not_ready_one_does_not() -> None:
    index = WebhookIndex()
    resolving = webhook_state(ready=False, resolving=True)
    index.put(resolving)
    assert index.subscribers("shop", "User.Created") == [resolving]
    resolving.resolving = False
    assert index.subscribers("shop", "User.Created") == []


async def test_answered_outcomes_waiting_for_their_write_hold_back_new_events(engine: DeliveryEngine) -> None:
    """What a dying leader would repeat is bounded: past --max-concurrency answered-but-unwritten
    outcomes, the watch takes up nothing new until writes catch up."""
    assert not engine.backlogged()
    engine._unrecorded = engine.max_unrecorded
    assert engine.backlogged()
    engine._unrecorded = engine.max_unrecorded - 1
    assert not engine.backlogged()
