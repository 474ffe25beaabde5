"""Fan-out of WebhookEvents into deliveries: attempts, retries, status writes, redelivery and TTL.

The WebhookEvent's status is the durable record: after a restart, the watch lists every event
again and each one resumes from its ``status.deliveries``. Attempts of one event that run together
form a round, and a round ends in one status write.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from webhook_operator.delivery.attempt import AttemptResult, send
from webhook_operator.delivery.transport import DeliveryClient
from webhook_operator.index import WebhookIndex, WebhookState
from webhook_operator.kube import ApiError, KubeClient, resource_path
from webhook_operator.matching import sample_event_for
from webhook_operator.metrics import Metrics
from webhook_operator.model import (
    FINAL_OUTCOMES,
    FINAL_PHASES,
    REDELIVER_ANNOTATION,
    format_time,
    format_time_ms,
    now,
    parse_time,
)
from webhook_operator.retry import next_backoff, should_retry, status_class
from webhook_operator.settings import Settings
from webhook_operator.signing import build_body, format_created_at, message_id
from webhook_operator.status import delivered_summary, event_phase

log = logging.getLogger(__name__)
WRITE_RETRY_S = (0.5, 1, 2, 5, 10, 30)
FINISHED_MEMORY_S = 300.0
# Deletions of expired events in flight at once: at a busy API server's 100-150 ms per request,
# 10 fell behind the 60 events/s the operator completes (measured by the benchmark's soak).
EXPIRY_CONCURRENCY = 32
SAMPLE_DATA = {"id": "sample_0001", "sample": True}
# Backpressure (see DeliveryEngine.backlogged): the watch pauses, and the rest of a backlog waits in
# the API server, while this many deliveries per unit of --max-concurrency queue for a global slot...
QUEUED_PER_SLOT = 4
# ...or while this many events have not finished their first round of attempts, whatever holds them.
MAX_FIRST_ROUNDS = 10_000

DeliveryCallback = Callable[[WebhookState, bool, int | None], None]


def event_path(namespace: str, name: str, subresource: str | None = None) -> str:
    return resource_path("webhookevents", namespace, name, subresource=subresource)


@dataclass
class EventJob:
    namespace: str
    name: str
    uid: str
    event: str
    created_at: str
    event_id: str  # spec.eventId when the publisher gave one, else the uid
    data: Any
    deliveries: list[dict[str, Any]]
    redelivery: dict[str, Any] | None = None
    running: int = 0
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gone: bool = False
    next_redelivery: str | None = None
    written: dict[str, Any] | None = None  # the last status written, to skip identical writes
    completion_time: str | None = None
    resource_version: int | None = None  # of the last status write
    in_first_round: bool = True


class DeliveryEngine:
    def __init__(
        self,
        settings: Settings,
        kube: KubeClient,
        index: WebhookIndex,
        metrics: Metrics,
        client: DeliveryClient,
        on_delivery_final: DeliveryCallback,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.index = index
        self.metrics = metrics
        self.client = client
        self.on_delivery_final = on_delivery_final
        self._global = asyncio.Semaphore(settings.max_concurrency)
        self._jobs: dict[str, EventJob] = {}
        # uid -> (resourceVersion of our last write, when): a watch event older than what we wrote
        # last is stale, and must not restart an event that just finished.
        self._finished: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expiry: list[tuple[float, str, str, str]] = []  # (deadline, uid, namespace, name)
        self._expiry_changed = asyncio.Event()
        self._deleting = asyncio.Semaphore(EXPIRY_CONCURRENCY)
        self._first_rounds = 0  # jobs whose first round of attempts has not ended
        self._queued = 0  # jobs not yet running, plus attempts waiting for a global slot
        self.max_queued = QUEUED_PER_SLOT * settings.max_concurrency
        self.max_first_rounds = MAX_FIRST_ROUNDS
        self._capacity = asyncio.Event()  # set when the backlog has shrunk since the last wait
        self.status_writes = 0

    # -- watch entry point --------------------------------------------------------------
    async def on_event(self, type_: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        uid = meta.get("uid", "")
        if type_ == "DELETED":
            job = self._jobs.get(uid)
            if job:
                job.gone = True
            return
        if self._is_stale(uid, meta.get("resourceVersion")):
            return
        status = body.get("status") or {}
        redeliver = (meta.get("annotations") or {}).get(REDELIVER_ANNOTATION)
        handled = (status.get("redelivery") or {}).get("requestedAt")
        job = self._jobs.get(uid)
        if job is not None:
            if redeliver and redeliver != handled:
                job.next_redelivery = redeliver
            return
        if status.get("phase") in FINAL_PHASES:
            if redeliver and redeliver != handled:
                self._start(self._job_from(body, redeliver=redeliver))
            else:
                self._expire_later(body)
            return
        self._start(self._job_from(body))

    def _is_stale(self, uid: str, resource_version: Any) -> bool:
        written = self._finished.get(uid)
        if written is None:
            return False
        try:
            # Equal: the echo of our own last write, already handled (its expiry is queued).
            return int(resource_version) <= written[0]
        except (TypeError, ValueError):
            return False

    def _remember_finished(self, job: EventJob) -> None:
        if job.resource_version is None:
            return
        clock = time.monotonic()
        self._finished[job.uid] = (job.resource_version, clock)
        self._finished.move_to_end(job.uid)
        while self._finished and next(iter(self._finished.values()))[1] < clock - FINISHED_MEMORY_S:
            self._finished.popitem(last=False)

    def _job_from(self, body: dict[str, Any], *, redeliver: str | None = None) -> EventJob:
        meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
        created = parse_time(meta.get("creationTimestamp")) or now()
        deliveries = [dict(d) for d in status.get("deliveries") or ()]
        redelivery = status.get("redelivery")
        if redeliver:
            for entry in deliveries:
                if entry.get("outcome") == "Failed":
                    entry.update(outcome="Pending", attempts=0)
                    for key in (
                        "statusCode",
                        "error",
                        "responseBody",
                        "nextAttemptTime",
                        "durationMs",
                        "firstAttemptTime",
                        "lastAttemptTime",
                    ):
                        entry.pop(key, None)
            redelivery = {"requestedAt": redeliver, "startedAt": format_time(now())}
        return EventJob(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            event=str(spec.get("event", "")),
            created_at=format_created_at(created),
            event_id=str(spec.get("eventId") or meta["uid"]),
            data=spec.get("data"),
            deliveries=deliveries,
            redelivery=redelivery,
        )

    def backlogged(self) -> bool:
        """True while the operator as a whole has enough work queued: the watch holds back new events.

        Attempts waiting for their own webhook's slot (``--per-webhook-concurrency``) do not count,
        so one slow webhook cannot stall the others; only the hard cap on events in their first
        round bounds memory in that case.
        """
        return self._queued >= self.max_queued or self._first_rounds >= self.max_first_rounds

    async def wait_for_capacity(self) -> None:
        """Return once the engine is not backlogged (at once, usually)."""
        while self.backlogged():
            self._capacity.clear()
            await self._capacity.wait()

    def _dequeued(self) -> None:
        self._queued -= 1
        self._capacity.set()

    def _first_round_over(self, job: EventJob) -> None:
        if job.in_first_round:
            job.in_first_round = False
            self._first_rounds -= 1
            self._capacity.set()

    def _start(self, job: EventJob) -> None:
        self._first_rounds += 1
        self._queued += 1
        self._jobs[job.uid] = job
        task = asyncio.ensure_future(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one event ----------------------------------------------------------------------
    async def _run(self, job: EventJob) -> None:
        self._dequeued()
        try:
            fresh = not job.deliveries and job.redelivery is None
            if fresh:
                targets = self.index.subscribers(job.namespace, job.event)
                job.deliveries = [
                    {"webhook": t.name, "id": message_id(job.uid, t.uid), "outcome": "Pending", "attempts": 0}
                    for t in targets
                ]
            open_entries = [d for d in job.deliveries if d.get("outcome") not in FINAL_OUTCOMES]
            if open_entries:
                await asyncio.gather(*(self._deliver(job, entry) for entry in open_entries))
            if not job.gone:
                await self._write(job, final=True)
        except Exception:
            log.exception("delivering event %s/%s failed unexpectedly", job.namespace, job.name)
        finally:
            self._first_round_over(job)
            self._jobs.pop(job.uid, None)
            self._remember_finished(job)
            if job.next_redelivery and not job.gone:
                fresh_body = await self._read(job)
                if fresh_body is not None:
                    await self.on_event("MODIFIED", fresh_body)

    async def _read(self, job: EventJob) -> dict[str, Any] | None:
        try:
            return await self.kube.get(event_path(job.namespace, job.name))
        except (ApiError, OSError):
            return None

    async def _deliver(self, job: EventJob, entry: dict[str, Any]) -> None:
        name = entry["webhook"]
        pending = self.metrics.pending.labels(job.namespace, name)
        pending.inc()
        waiting = True
        try:
            while not job.gone:
                state = self.index.get(job.namespace, name)
                if state is None or not state.deliverable:
                    reason = (
                        "webhook deleted"
                        if state is None
                        else ("webhook disabled" if not state.spec.enabled else "webhook not Ready")
                    )
                    entry.update(outcome="Failed", error=f"not delivered: {reason}")
                    entry.pop("nextAttemptTime", None)
                    job.running += 1
                    await self._round_done(job)
                    return
                due = parse_time(entry.get("nextAttemptTime"))
                if due is not None:
                    delay = (due - now()).total_seconds()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        continue  # the webhook may have changed while we waited
                job.running += 1
                pending.dec()
                waiting = False
                result = await self._attempt(job, entry, state)
                final = self._apply(entry, result, state)
                if final:
                    succeeded = entry["outcome"] == "Succeeded"
                    self.metrics.delivery_final(job.namespace, name, job.event, succeeded)
                    self.on_delivery_final(state, succeeded, result.status_code)
                await self._round_done(job)
                if final:
                    return
                pending.inc()
                waiting = True
        finally:
            if waiting:
                pending.dec()

    async def _attempt(self, job: EventJob, entry: dict[str, Any], state: WebhookState) -> AttemptResult:
        body = build_body(
            hook_id=state.hook_id, event=job.event, created_at=job.created_at, event_id=job.event_id, data=job.data
        )
        assert state.limiter is not None
        # The webhook's own slot first: attempts queued behind a slow webhook hold no global slot.
        async with state.limiter:
            self._queued += 1
            try:
                await self._global.acquire()
            finally:
                self._dequeued()
            in_flight = self.metrics.in_flight.labels(job.namespace, state.name)
            in_flight.inc()
            try:
                result = await send(self.client, state, body, entry["id"], timeout_s=state.spec.retry.timeout_seconds)
            finally:
                in_flight.dec()
                self._global.release()
        self.metrics.attempt(
            job.namespace, state.name, status_class(result.status_code, result.failure), result.duration_s
        )
        return result

    @staticmethod
    def _apply(entry: dict[str, Any], result: AttemptResult, state: WebhookState) -> bool:
        """Fold one attempt into its delivery entry; True when the delivery is final."""
        stamp = format_time(now())
        attempts = int(entry.get("attempts") or 0) + 1
        entry["attempts"] = attempts
        entry.setdefault("firstAttemptTime", stamp)
        entry["lastAttemptTime"] = stamp
        entry["durationMs"] = round(result.duration_s * 1000)
        entry["error"] = result.error
        entry["responseBody"] = result.response_body
        if result.status_code is not None:
            entry["statusCode"] = result.status_code
        else:
            entry.pop("statusCode", None)
        entry.pop("nextAttemptTime", None)
        if result.succeeded:
            entry["outcome"] = "Succeeded"
            return True
        policy = state.spec.retry
        if should_retry(attempts, policy, status=result.status_code, failure=result.failure):
            delay = next_backoff(attempts, policy, retry_after=result.retry_after)
            entry["outcome"] = "Retrying"
            entry["nextAttemptTime"] = format_time_precise(delay)
            return False
        entry["outcome"] = "Failed"
        return True

    async def _round_done(self, job: EventJob) -> None:
        job.running -= 1
        if job.running == 0:
            self._first_round_over(job)
            if not job.gone:
                await self._write(job, final=False)

    async def _write(self, job: EventJob, *, final: bool) -> None:
        async with job.write_lock:
            phase = event_phase(job.deliveries)
            if final and phase not in FINAL_PHASES:
                return
            status: dict[str, Any] = {
                "phase": phase,
                "deliveries": job.deliveries,
                "delivered": delivered_summary(job.deliveries),
                "completionTime": None,
            }
            if phase in FINAL_PHASES:
                job.completion_time = job.completion_time or format_time(now())
                status["completionTime"] = job.completion_time
            if job.redelivery is not None:
                status["redelivery"] = job.redelivery
            if job.written == status:
                return
            for delay in (*WRITE_RETRY_S, None):
                try:
                    result = await self.kube.merge_patch(
                        event_path(job.namespace, job.name, "status"), {"status": status}
                    )
                    self.status_writes += 1
                    version = str((result.get("metadata") or {}).get("resourceVersion", ""))
                    job.resource_version = int(version) if version.isdigit() else None
                    job.written = {**status, "deliveries": [dict(d) for d in job.deliveries]}
                    break
                except ApiError as exc:
                    if exc.status == 404:
                        job.gone = True
                        return
                    if delay is None:
                        log.error("giving up writing status of %s/%s: %s", job.namespace, job.name, exc)
                        return
                    log.warning(
                        "writing status of %s/%s failed, retrying in %ss: %s", job.namespace, job.name, delay, exc
                    )
                except OSError as exc:
                    if delay is None:
                        log.error("giving up writing status of %s/%s: %s", job.namespace, job.name, exc)
                        return
                    log.warning(
                        "writing status of %s/%s failed, retrying in %ss: %s", job.namespace, job.name, delay, exc
                    )
                await asyncio.sleep(delay)
            if phase in FINAL_PHASES and self.settings.event_ttl_s > 0:
                self._push_expiry(now().timestamp() + self.settings.event_ttl_s, job.uid, job.namespace, job.name)

    # -- test payloads ------------------------------------------------------------------
    async def send_test(self, state: WebhookState, pattern: str) -> dict[str, Any]:
        """One unrecorded, unretried sample delivery; counted in no health figure or metric."""
        event = sample_event_for(pattern)
        event_id = str(uuid.uuid4())
        body = build_body(
            hook_id=state.hook_id,
            event=event,
            created_at=format_created_at(now()),
            event_id=event_id,
            data=SAMPLE_DATA,
            test=True,
        )
        async with self._global:
            result = await send(
                self.client, state, body, message_id(event_id, state.uid), timeout_s=state.spec.retry.timeout_seconds
            )
        outcome: dict[str, Any] = {"event": event, "durationMs": round(result.duration_s * 1000)}
        if result.status_code is not None:
            outcome["statusCode"] = result.status_code
        if result.error:
            outcome["error"] = result.error
        return outcome

    # -- retention ----------------------------------------------------------------------
    def _expire_later(self, body: dict[str, Any]) -> None:
        if self.settings.event_ttl_s <= 0:
            return
        meta, status = body["metadata"], body.get("status") or {}
        completed = parse_time(status.get("completionTime")) or now()
        self._push_expiry(
            completed.timestamp() + self.settings.event_ttl_s, meta["uid"], meta["namespace"], meta["name"]
        )

    def _push_expiry(self, deadline: float, uid: str, namespace: str, name: str) -> None:
        heapq.heappush(self._expiry, (deadline, uid, namespace, name))
        self._expiry_changed.set()

    async def expiry_loop(self) -> None:
        """Delete completed events once their TTL has passed (uid-guarded, so a recreated name is safe)."""
        while True:
            self._expiry_changed.clear()
            timeout = 3600.0
            if self._expiry:
                timeout = max(0.0, self._expiry[0][0] - now().timestamp())
            if timeout > 0:
                try:
                    await asyncio.wait_for(self._expiry_changed.wait(), timeout=min(timeout, 3600.0))
                except TimeoutError:
                    pass
                continue
            _, uid, namespace, name = heapq.heappop(self._expiry)
            if uid in self._jobs:
                continue  # redelivered meanwhile; it is queued again when it completes
            await self._deleting.acquire()
            task = asyncio.ensure_future(self._delete_expired(uid, namespace, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _delete_expired(self, uid: str, namespace: str, name: str) -> None:
        try:
            await self.kube.delete(event_path(namespace, name), uid=uid)
        except (ApiError, OSError) as exc:
            log.warning("deleting expired event %s/%s failed, retrying later: %s", namespace, name, exc)
            self._push_expiry(now().timestamp() + 30, uid, namespace, name)
        finally:
            self._deleting.release()

    # -- introspection ------------------------------------------------------------------
    @property
    def active_jobs(self) -> int:
        return len(self._jobs)


def format_time_precise(delay_s: float) -> str:
    """When a retry is due, to the millisecond, so short backoffs survive a restart unchanged."""
    return format_time_ms(now() + dt.timedelta(seconds=delay_s))
