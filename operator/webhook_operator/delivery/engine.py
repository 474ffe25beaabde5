"""Fan-out of WebhookEvents into deliveries: attempts, retries, status writes, redelivery and TTL.

The WebhookEvent's status is the durable record: after a restart, the watch lists every event
again and each one resumes from its ``status.deliveries``. Attempts of one event that run together
form a round, and a round ends in one status write.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from webhook_operator.apiretry import backoff_delay, is_transient, retry_after_of, with_retries
from webhook_operator.delivery.attempt import AttemptResult, send
from webhook_operator.delivery.ordering import OrderingGate, OrderKey, ParkedInOrder, order_key
from webhook_operator.delivery.queues import FairSlots, Parked, ParkedEvents
from webhook_operator.delivery.ratelimit import Held, RateBuckets, TokenBucket, until_token
from webhook_operator.delivery.redelivery import REDELIVER, REPLAY, Request, pending_request
from webhook_operator.delivery.retention import Retention
from webhook_operator.delivery.transport import DeliveryClient
from webhook_operator.filter import filter_input
from webhook_operator.index import WebhookIndex, WebhookState
from webhook_operator.kube import ApiError, KubeClient, resource_path
from webhook_operator.matching import sample_event_for
from webhook_operator.metrics import Metrics
from webhook_operator.model import (
    FINAL_OUTCOMES,
    FINAL_PHASES,
    format_time,
    format_time_ms,
    now,
    now_stamp,
    parse_time,
)
from webhook_operator.retry import next_backoff, should_retry, status_class
from webhook_operator.settings import Settings
from webhook_operator.signing import body_with_data, build_body, encode_json, format_created_at, message_id
from webhook_operator.status import delivered_summary, event_conditions, event_phase

log = logging.getLogger(__name__)
FINISHED_MEMORY_S = 300.0
# A delivery due while its webhook exists but is not Ready (a header Secret being recreated, a
# reconcile that met an API error) waits and looks again this often; only a deleted or disabled
# webhook ends it.
NOT_READY_RECHECK_S = 1.0
# ...for PARK_AFTER_S in memory, then outside it, read again this often (so a webhook that stays not
# Ready holds no memory for its backlog).
NOT_READY_PARK_S = 10.0
# Deletions of expired events in flight at once: at a busy API server's 100-150 ms per request,
# 10 fell behind the 60 events/s the operator completes (measured by the benchmark's soak).
EXPIRY_CONCURRENCY = 32
# A wait for a rate-limit token shorter than this is no wait (the lock, the event loop).
MIN_RATE_WAIT_S = 0.001
SAMPLE_DATA = {"id": "sample_0001", "sample": True}
# Backpressure (see DeliveryEngine.backlogged): the watch pauses, and the rest of a backlog waits in
# the API server, while this many deliveries per unit of --max-concurrency queue for a global slot...
QUEUED_PER_SLOT = 4
# ...or while this many events have not finished their first round of attempts, whatever holds them.
MAX_FIRST_ROUNDS = 10_000
# A delivery whose retry is due later than this leaves memory: its event is kept as (due, uid) and
# read again from the API server when due (ParkedEvents); a shorter wait is slept through.
PARK_AFTER_S = 5.0
# A status write taking longer than this (etcd down: the API server holds requests) pauses new attempts
# as a failing one does, until a write goes through.
WRITE_SLOW_S = 2.0
# Attempts answered but not yet written to their event's status are what a killed leader (or one
# that lost its Lease) leaves for the next one to repeat: while --max-concurrency of them wait for
# their write, no new event or parked one is taken up (see backlogged), however far the API server
# lags; rounds under way go on, so that they end and are written. An event's outcomes are written
# together when its round ends, one write per event as a rule (each costs the API server several
# creates); those of a round still running after FLUSH_AFTER_S go out then.
FLUSH_AFTER_S = 5.0
# Attempts one webhook may have waiting for (or holding) its own slots; a delivery beyond that leaves
# memory the same way and is read again when the webhook has room (or after BUSY_RECHECK_S), so a slow
# or hanging endpoint holds neither memory nor the watch for everyone else.
MAX_WAITING_PER_WEBHOOK = 256
# spec.ordering: deliveries this far back in their webhook's order wait outside memory (their place kept),
# read again once they are this close to the head. An endpoint failing for a day with the events still
# coming cannot grow the pod then.
MAX_ORDERED_IN_MEMORY = 256
ORDER_RECHECK_S = 1.0
BUSY_RECHECK_S = 30.0
# Parked events read again at once; a read that fails is tried again after this long.
WAKE_CONCURRENCY = 16
WAKE_RETRY_S = 5.0
# While global slots are short, this fraction of them stays free for webhooks under their fair share.
RESERVE_FRACTION = 0.1

WebhookKey = tuple[str, str, str]  # (namespace, name, uid)
DeliveryCallback = Callable[[WebhookState, bool, int | None], None]
AttemptCallback = Callable[[WebhookState, AttemptResult], None]


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
    final_written: bool = False  # the final status is stored
    in_first_round: bool = True
    generation: int | None = None  # metadata.generation, written back as status.observedGeneration
    conditions: list[dict[str, Any]] = field(default_factory=list)  # as last read or written
    replay: dict[str, Any] | None = None  # status.replay: the last replay request answered
    order: OrderKey = ("", "", "")  # spec.ordering: (creationTimestamp, namespace, name)
    unrecorded: int = 0  # attempts whose outcome is in ``deliveries`` but not yet in a written status
    flush_due: bool = False  # a write of those outcomes is scheduled
    matched: bool = False  # its deliveries were matched here, so the stored status does not hold them yet
    data_json: bytes | None = None  # ``data`` as every body carries it, encoded at the first attempt

    @property
    def handled(self) -> tuple[str | None, ...]:
        """The redeliver and replay values this job answers (or last answered)."""
        return ((self.redelivery or {}).get("requestedAt"), (self.replay or {}).get("requestedAt"))


@dataclass(frozen=True)
class Finished:
    """An event this engine finished moments ago: watch events from before its final write may follow."""

    handled: tuple[str | None, ...]
    clock: float


class DeliveryEngine:
    def __init__(
        self,
        settings: Settings,
        kube: KubeClient,
        index: WebhookIndex,
        metrics: Metrics,
        client: DeliveryClient,
        on_delivery_final: DeliveryCallback,
        on_attempt: AttemptCallback | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.index = index
        self.metrics = metrics
        self.client = client
        self.on_delivery_final = on_delivery_final
        self.on_attempt = on_attempt
        self._global: FairSlots[tuple[str, str]] = FairSlots(
            settings.max_concurrency, reserve=int(settings.max_concurrency * RESERVE_FRACTION)
        )
        self._parked = ParkedEvents()
        self._parked_changed = asyncio.Event()
        self._wake_task: asyncio.Task[None] | None = None
        self._waking = asyncio.Semaphore(WAKE_CONCURRENCY)
        self._load: dict[tuple[str, str], int] = {}  # per webhook: attempts waiting for or holding its slots
        self.max_waiting_per_webhook = MAX_WAITING_PER_WEBHOOK
        self.park_after_s = PARK_AFTER_S
        self._jobs: dict[str, EventJob] = {}
        # Events finished here in the last FINISHED_MEMORY_S: a watch event of one of them that is not a
        # new redelivery request is an echo of our writes or older, and must not restart it. The
        # resourceVersion cannot tell which is older: it is opaque (API conventions).
        self._finished: OrderedDict[str, Finished] = OrderedDict()
        self._fetching: set[str] = set()  # uids whose redelivery waits for a fresh read
        # Parked events being read again (uid -> a watch event with a redelivery request that came
        # meanwhile). Other watch events of them are older than that read, e.g. the late echo of an
        # intermediate status write: resuming from one would repeat deliveries recorded since.
        self._reading: dict[str, dict[str, Any] | None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.retention = Retention(
            ttl_s=settings.event_ttl_s,
            failed_ttl_s=settings.failed_event_ttl_s,
            max_per_namespace=settings.max_completed_events,
        )
        self._expiry_changed = asyncio.Event()
        self._deleting = asyncio.Semaphore(EXPIRY_CONCURRENCY)
        self._first_rounds = 0  # jobs whose first round of attempts has not ended
        self._queued = 0  # jobs not yet running, plus attempts waiting for a global slot
        self.max_queued = QUEUED_PER_SLOT * settings.max_concurrency
        self.max_first_rounds = MAX_FIRST_ROUNDS
        self._capacity = asyncio.Event()  # set when the backlog has shrunk since the last wait
        self._stopping = asyncio.Event()  # set by drain(): no new attempts, no new events
        # Cleared while status writes meet transient API errors or hang (WRITE_SLOW_S): no new attempt
        # starts then, since its outcome could not be recorded and the next leader would repeat it.
        self._recording = asyncio.Event()
        self._recording.set()
        # Cleared while the Lease is lost (suspend): nothing is sent, read for work or written; attempts
        # already sent finish, and their outcomes are written if this process leads again (resume).
        self._leading = asyncio.Event()
        self._leading.set()
        self._resumed = asyncio.Event()  # set by resume(): status writes backing off try again at once
        self.status_writes = 0
        self._unrecorded = 0  # attempts answered, outcome not yet written (see FLUSH_AFTER_S)
        self.max_unrecorded = settings.max_concurrency
        # spec.ordering: open deliveries per webhook, in event creation order. Ordered deliveries wait
        # until the first full list of events is in (set by the runtime), so that the order after a
        # restart is rebuilt from every recorded event, not from the first page.
        self.ordering = OrderingGate()
        self.order_ready = asyncio.Event()
        self._order_moved: dict[WebhookKey, asyncio.Event] = {}
        self._order_parked = ParkedInOrder()
        self.max_ordered_in_memory = MAX_ORDERED_IN_MEMORY
        self._order_task: asyncio.Task[None] | None = None
        # spec.rateLimit: one bucket per webhook (uid included: a recreated webhook starts full).
        self._buckets = RateBuckets()
        self._token_waiters: dict[WebhookKey, int] = {}  # deliveries queued for a webhook's rate-limit turn

    # -- watch entry point --------------------------------------------------------------
    async def on_event(self, type_: str | None, body: dict[str, Any]) -> None:
        if self._stopping.is_set():
            return
        meta = body.get("metadata") or {}
        uid = meta.get("uid", "")
        if type_ == "DELETED":
            job = self._jobs.get(uid)
            if job:
                job.gone = True
            self._unpark(uid, gone=True)
            self.retention.forget(uid)
            return
        status = body.get("status") or {}
        if uid in self._reading:
            if pending_request(meta, status) is not None:
                self._reading[uid] = body  # answered once the read has resumed the event
            return
        if uid in self._parked:
            # Read again when due; only a new redelivery (or replay) request wakes it now (the echo of
            # our own last write, or a relist, changes nothing).
            if pending_request(meta, status) is None:
                return
            self._unpark(uid)
            self._take_up(body)
            self._settle_order_places(uid)
            return
        self._take_up(body)

    def _take_up(self, body: dict[str, Any]) -> None:
        """A watched (or read) event not parked or being read: start, resume or answer it as its state says."""
        meta = body.get("metadata") or {}
        uid = meta.get("uid", "")
        status = body.get("status") or {}
        job = self._jobs.get(uid)
        if job is not None:
            # Whatever the version of this object: a request not yet answered is answered next.
            request = pending_request(meta, status, job.handled)
            if request is not None:
                job.next_redelivery = request.value
            return
        finished = self._finished.get(uid)
        if finished is not None:
            # Echo of our own writes, or older: only a new redelivery request counts, and it is taken
            # from a fresh read, since this copy's status may predate our final write.
            if pending_request(meta, status, finished.handled) is not None:
                self._redeliver_fresh(meta.get("namespace", ""), meta.get("name", ""), uid)
            return
        if status.get("phase") in FINAL_PHASES:
            request = pending_request(meta, status)
            if request is not None:
                self.retention.forget(uid)
                self._start(self._job_from(body, request=request))
            else:
                self._expire_later(body)
            return
        self._start(self._job_from(body))

    def _remember_finished(self, job: EventJob) -> None:
        clock = time.monotonic()
        while self._finished and next(iter(self._finished.values())).clock < clock - FINISHED_MEMORY_S:
            self._finished.popitem(last=False)
        if not job.final_written:
            self._finished.pop(job.uid, None)  # not finished: a later watch event may resume it
            return
        self._finished[job.uid] = Finished(job.handled, clock)
        self._finished.move_to_end(job.uid)

    def _redeliver_fresh(self, namespace: str, name: str, uid: str) -> None:
        """Start the redelivery requested on an event, from a fresh read of it."""
        if uid in self._fetching:
            return
        self._fetching.add(uid)
        self._spawn(self._redeliver_from_read(namespace, name, uid))

    async def _redeliver_from_read(self, namespace: str, name: str, uid: str) -> None:
        try:
            body = await with_retries(
                lambda: self.kube.get(event_path(namespace, name)), what=f"reading event {namespace}/{name}"
            )
        except (ApiError, OSError) as exc:
            log.error("redelivery of %s/%s not started: %s", namespace, name, exc)
            return
        finally:
            self._fetching.discard(uid)
        if body is None or (body.get("metadata") or {}).get("uid") != uid or uid in self._jobs:
            return
        request = pending_request(body.get("metadata") or {}, body.get("status") or {})
        if request is not None:
            self._unpark(uid)
            self._start(self._job_from(body, request=request))
            self._settle_order_places(uid)

    def _job_from(
        self, body: dict[str, Any], *, request: Request | None = None, redeliver: str | None = None
    ) -> EventJob:
        """The job for an event; ``request`` (or a redeliver annotation value) starts its deliveries over."""
        meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
        if redeliver and request is None:
            request = Request(REDELIVER, redeliver)
        created = parse_time(meta.get("creationTimestamp")) or now()
        deliveries = [dict(d) for d in status.get("deliveries") or ()]
        answered = {REDELIVER: status.get(REDELIVER), REPLAY: status.get(REPLAY)}
        if request is not None:
            for entry in deliveries:
                if request.selects(entry):
                    entry.update(outcome="Pending", attempts=0)
                    for key in (
                        "statusCode",
                        "error",
                        "responseBody",
                        "nextAttemptTime",
                        "durationMs",
                        "firstAttemptTime",
                        "lastAttemptTime",
                        "rateLimitedMs",
                    ):
                        entry.pop(key, None)
            answered[request.kind] = {"requestedAt": request.value, "startedAt": format_time(now())}
        generation = meta.get("generation")
        return EventJob(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            event=str(spec.get("event", "")),
            created_at=format_created_at(created),
            event_id=str(spec.get("eventId") or meta["uid"]),
            data=spec.get("data"),
            deliveries=deliveries,
            redelivery=answered[REDELIVER],
            replay=answered[REPLAY],
            order=order_key(format_time(created), meta["namespace"], meta["name"]),
            generation=generation if isinstance(generation, int) else None,
            conditions=list(status.get("conditions") or ()),
        )

    def backlogged(self) -> bool:
        """True while the operator as a whole has enough work queued: the watch holds back new events.

        Attempts waiting for their own webhook's slot (``--per-webhook-concurrency``) do not count,
        so one slow webhook cannot stall the others; only the hard cap on events in their first
        round bounds memory in that case. Answered outcomes not yet written count too: a lagging API
        server holds back new work instead of letting what a dying leader would repeat grow.
        """
        return (
            self._queued >= self.max_queued
            or self._first_rounds >= self.max_first_rounds
            or self._unrecorded >= self.max_unrecorded
        )

    async def wait_for_capacity(self) -> None:
        """Return once the engine is not backlogged (at once, usually)."""
        while self.backlogged() and not self._stopping.is_set():
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
        self._finished.pop(job.uid, None)
        self._spawn(self._run(job))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one event ----------------------------------------------------------------------
    async def _run(self, job: EventJob) -> None:
        self._dequeued()
        try:
            fresh = not job.deliveries and job.redelivery is None and job.replay is None
            if fresh:
                payload = filter_input(job.event, job.event_id, job.created_at, job.data)
                targets = self.index.subscribers(job.namespace, job.event, payload)
                job.deliveries = [
                    {"webhook": t.name, "id": message_id(job.uid, t.uid), "outcome": "Pending", "attempts": 0}
                    for t in targets
                ]
                job.matched = True
            open_entries = [d for d in job.deliveries if d.get("outcome") not in FINAL_OUTCOMES]
            parks: list[_Park] = []
            if open_entries:
                results = await asyncio.gather(*(self._deliver(job, entry) for entry in open_entries))
                parks = [park for park in results if park is not None]
            if not job.gone:
                # A delivery waiting for its webhook to be Ready may have no entry in the stored status
                # yet, and a fresh read would not subscribe it again: it is written before leaving memory.
                await self._write(job, final=not any(park.record for park in parks))
                if parks and not job.gone and not self._stopping.is_set():
                    self._park(job, parks)
        except Exception:
            log.exception("delivering event %s/%s failed unexpectedly", job.namespace, job.name)
        finally:
            self._recorded(job, job.unrecorded)  # written, gone, or abandoned with the job
            self._first_round_over(job)
            self._jobs.pop(job.uid, None)
            self._remember_finished(job)
            if job.next_redelivery and not job.gone:
                # Requested while this job ran: the request is answered from a fresh read.
                self._redeliver_fresh(job.namespace, job.name, job.uid)

    async def _deliver(self, job: EventJob, entry: dict[str, Any]) -> _Park | None:
        """Attempt one delivery until it is final; or return when it is to wait outside memory."""
        name = entry["webhook"]
        counted: WebhookState | None = None  # the webhook whose deliveries_pending counts this delivery
        ordered_as: WebhookKey | None = None  # where this delivery stands in its webhook's order
        not_ready_since = 0.0  # monotonic time since which its webhook has been not Ready

        def count_pending(state: WebhookState | None) -> None:
            nonlocal counted
            if counted is not None and self._live(counted):
                self.metrics.gauges(job.namespace, name).pending.dec()
            counted = state
            if counted is not None:
                self.metrics.gauges(job.namespace, name).pending.inc()

        try:
            while not job.gone and not self._stopping.is_set():
                state = self.index.get(job.namespace, name)
                ending = waiting_reason(state)
                if ending is not None and ending != NOT_READY:
                    entry.update(outcome="Failed", error=f"not delivered: {ending}")
                    entry.pop("nextAttemptTime", None)
                    job.running += 1
                    await self._round_done(job)
                    return None
                assert state is not None
                if counted is not state:
                    count_pending(state)
                if ordered_as != (state.namespace, name, state.uid):
                    if ordered_as is not None:
                        self._unorder(ordered_as, job.order)
                    ordered_as = (state.namespace, name, state.uid)
                    self.ordering.add(ordered_as, job.order)
                    self._order_gauge(ordered_as, state)
                if ending == NOT_READY:
                    # Not Ready for now (a Secret being recreated, an API error while reconciling):
                    # the attempt waits, and is not counted, until the webhook is Ready again; past
                    # park_after_s it waits outside memory (an Ordered webhook's keeps its place here).
                    self._first_round_over(job)
                    not_ready_since = not_ready_since or time.monotonic()
                    if time.monotonic() - not_ready_since >= self.park_after_s and not state.spec.ordered:
                        return _Park(now().timestamp() + NOT_READY_PARK_S, entry["webhook"], record=True)
                    await asyncio.sleep(NOT_READY_RECHECK_S)
                    continue
                not_ready_since = 0.0
                due = parse_time(entry.get("nextAttemptTime"))
                if due is not None:
                    delay = (due - now()).total_seconds()
                    # An Ordered webhook's delivery stays in memory: it holds its place in the order.
                    if delay > self.park_after_s and not state.spec.ordered:
                        return _Park(due.timestamp(), entry["webhook"])
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stopping.wait(), min(delay, NOT_READY_RECHECK_S * 30))
                        continue  # the webhook may have changed while we waited
                if state.spec.ordered and not (
                    self.order_ready.is_set() and self.ordering.may_attempt(ordered_as, job.order)
                ):
                    # Behind an earlier event of this webhook that is not final yet: wait, holding no slot;
                    # far back in the order, outside memory (its key stays in the gate: its place is kept).
                    self._first_round_over(job)
                    if self.ordering.position(ordered_as, job.order) >= self.max_ordered_in_memory:
                        place, ordered_as = ordered_as, None
                        return _Park(math.inf, entry["webhook"], record=job.matched, order=place)
                    await self._wait_for_turn(ordered_as, state)
                    continue
                if not (self._recording.is_set() and self._leading.is_set()):
                    await self._until_recording()
                    continue
                key = (job.namespace, name)
                if self._load.get(key, 0) >= self.max_waiting_per_webhook:
                    return _Park(now().timestamp() + BUSY_RECHECK_S, entry["webhook"], busy=key)
                token_turn: asyncio.Lock | None = None
                rate_waited = 0.0
                held = self._current_bucket(state)
                if held is not None and not state.spec.ordered:
                    # A backlog behind the rate limit longer than park_after_s waits outside memory.
                    wait = self._token_wait(state, held[0])
                    if wait > self.park_after_s:
                        park_at = now().timestamp() + wait - self.park_after_s / 2
                        return _Park(park_at, entry["webhook"], busy=rate_key(state))
                if held is not None:
                    # spec.rateLimit: wait for a token outside the round (the other webhooks' results get
                    # written) holding no slot; this delivery keeps the turn until _attempt takes the token.
                    token_turn = held[1]
                    rate_waited = await self._wait_for_token(state, held)
                    if self.index.get(job.namespace, name) is not state or waiting_reason(state) is not None:
                        token_turn.release()  # deleted, disabled or not Ready while it waited: look again
                        continue
                job.running += 1
                count_pending(None)
                self.ordering.attempt_started(ordered_as)
                try:
                    result = await self._attempt(job, entry, state, rate_waited, token_turn)
                except _Stopped:  # shutting down before the request was sent: the entry stays as it was
                    await self._round_done(job)
                    return None
                finally:
                    self.ordering.attempt_ended(ordered_as)
                    self._order_wake(ordered_as)
                final = self._apply(entry, result, state)
                if final and self._live(state):
                    succeeded = entry["outcome"] == "Succeeded"
                    self.metrics.delivery_final(job.namespace, name, job.event, succeeded)
                    self.on_delivery_final(state, succeeded, result.status_code)
                await self._round_done(job)
                if final:
                    return None
            return None
        finally:
            count_pending(None)
            if ordered_as is not None:
                self._unorder(ordered_as, job.order)

    # -- spec.ordering --------------------------------------------------------------------
    def _unorder(self, webhook: WebhookKey, key: OrderKey) -> None:
        self.ordering.remove(webhook, key)
        self._order_wake(webhook)
        state = self.index.get(webhook[0], webhook[1])
        if state is not None and state.uid == webhook[2]:
            self._order_gauge(webhook, state)

    def _order_wake(self, webhook: WebhookKey) -> None:
        moved = self._order_moved.pop(webhook, None)
        if moved is not None:
            moved.set()
        if self._order_parked.holds(webhook):
            self._wake_in_order(webhook)

    def _order_gauge(self, webhook: WebhookKey, state: WebhookState) -> None:
        blocked = self.ordering.blocked(webhook) if state.spec.ordered else 0
        self.metrics.gauges(state.namespace, state.name).ordered_blocked.set(blocked)

    async def _wait_for_turn(self, webhook: WebhookKey, state: WebhookState) -> None:
        """Until the order of this webhook moves (or a second passes: the spec may have changed)."""
        moved = self._order_moved.setdefault(webhook, asyncio.Event())
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(moved.wait(), NOT_READY_RECHECK_S)
        if self._live(state):
            self.metrics.ordered_wait(state.namespace, state.name, time.monotonic() - started)
            self._order_gauge(webhook, state)

    # -- spec.rateLimit -------------------------------------------------------------------
    def _bucket(self, state: WebhookState) -> Held | None:
        key = (state.namespace, state.name, state.uid)
        limit = state.spec.rate_limit
        if limit is None:
            if self._buckets.drop(key) and self._parked.release(rate_key(state), now().timestamp()):
                self._parked_changed.set()  # the limit is gone: what waited for it is due now
            return None
        return self._buckets.get(key, limit)

    def _current_bucket(self, state: WebhookState) -> Held | None:
        """The bucket of the webhook's current spec (a reconcile may have replaced ``state`` meanwhile)."""
        current = self.index.get(state.namespace, state.name)
        return self._bucket(current if current is not None and current.uid == state.uid else state)

    def _token_wait(self, state: WebhookState, bucket: TokenBucket) -> float:
        """Seconds a new delivery would wait for a token: the bucket's own delay plus the waiters ahead."""
        waiting = self._token_waiters.get((state.namespace, state.name, state.uid), 0)
        return bucket.delay(time.monotonic()) + waiting / bucket.limit.requests_per_second

    async def _wait_for_token(self, state: WebhookState, held: Held) -> float:
        """Take the webhook's turn (its lock) and wait, holding no slot, until its bucket has a token;
        the seconds waited, the turn included. The caller passes the turn on to ``_attempt``.

        Waiters queue for the turn oldest first, so one wakes per token rather than all of them; the
        spec is looked at again every RATE_RECHECK_S, so a changed or removed limit applies to waiters.
        """
        started = time.monotonic()
        bucket, turn = held
        key = (state.namespace, state.name, state.uid)
        self._token_waiters[key] = self._token_waiters.get(key, 0) + 1
        try:
            await turn.acquire()
        finally:
            left = self._token_waiters[key] - 1
            if left:
                self._token_waiters[key] = left
            else:
                del self._token_waiters[key]
            if not self._stopping.is_set() and self._token_wait(state, bucket) < self.park_after_s / 2:
                # The queue is short again: the longest-parked deliveries behind this limit come back.
                for _ in range(2):
                    woken = self._parked.pop_busy(rate_key(state))
                    if woken is None:
                        break
                    self._spawn(self._wake(*woken))
        try:
            await until_token(bucket, lambda: self._current_bucket(state), self._stopping)
        except BaseException:
            turn.release()
            raise
        waited = time.monotonic() - started
        if waited < MIN_RATE_WAIT_S:
            return 0.0
        if self._live(state):
            self.metrics.rate_limited(state.namespace, state.name, waited)
        return waited

    async def _until_recording(self) -> None:
        """Wait while status writes fail or the Lease is lost (or until stopping)."""
        for ready in (self._leading, self._recording):
            if not ready.is_set():
                await self._until(ready)

    async def _until(self, ready: asyncio.Event) -> None:
        """Wait until ``ready`` is set or the engine stops."""
        waits = [asyncio.ensure_future(ready.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _live(self, state: WebhookState) -> bool:
        """Whether ``state`` is still the index's webhook of its name: a deleted one's metrics stay gone."""
        current = self.index.get(state.namespace, state.name)
        return current is not None and current.uid == state.uid

    async def _attempt(
        self,
        job: EventJob,
        entry: dict[str, Any],
        state: WebhookState,
        waited: float = 0.0,
        token_turn: asyncio.Lock | None = None,
    ) -> AttemptResult:
        """One attempt. With ``token_turn`` (the webhook's rate-limit turn, held by this delivery), the
        token is taken once the slots are held, at the moment of sending, and the turn passed on."""
        data_json = job.data_json
        if data_json is None:
            data_json = job.data_json = encode_json(job.data)
        body = body_with_data(
            hook_id=state.hook_id,
            event=job.event,
            created_at=job.created_at,
            event_id=job.event_id,
            data_json=data_json,
        )
        assert state.limiter is not None
        turn = token_turn

        def end_turn() -> None:
            nonlocal turn
            if turn is not None:
                turn.release()
                turn = None

        key = (job.namespace, state.name)
        self._load[key] = self._load.get(key, 0) + 1
        try:
            await self._acquire_slots(job, state, key)
            try:
                if not self._leading.is_set():  # lost the Lease while queued: send nothing until it is back
                    await self._until(self._leading)
                if self._stopping.is_set():
                    self._global.release(key)
                    raise _Stopped()
                if turn is not None:
                    held = self._current_bucket(state)
                    if held is not None:
                        held[0].take(time.monotonic())
                    end_turn()
                self.metrics.gauges(job.namespace, state.name).in_flight.inc()
                try:
                    result = await send(
                        self.client, state, body, entry["id"], timeout_s=state.spec.retry.timeout_seconds
                    )
                finally:
                    if self._live(state):
                        self.metrics.gauges(job.namespace, state.name).in_flight.dec()
                    self._global.release(key)
                # Counted until written (_recorded); the caller folds the result into the entry before
                # anything else runs.
                job.unrecorded += 1
                self._unrecorded += 1
            finally:
                state.limiter.release()
        finally:
            end_turn()
            load = self._load[key] - 1
            if load:
                self._load[key] = load
            else:
                del self._load[key]
            if load < self.max_waiting_per_webhook and not self._stopping.is_set():
                woken = self._parked.pop_busy(key)  # room again: the longest-waiting event comes back
                if woken is not None:
                    self._spawn(self._wake(*woken))
        if waited > 0:
            entry["rateLimitedMs"] = round(waited * 1000)  # the request log shows the wait
        else:
            entry.pop("rateLimitedMs", None)
        if self._live(state):
            self.metrics.attempt(
                job.namespace, state.name, status_class(result.status_code, result.failure), result.duration_s
            )
            if self.on_attempt is not None:
                self.on_attempt(state, result)
        return result

    @staticmethod
    def _apply(entry: dict[str, Any], result: AttemptResult, state: WebhookState) -> bool:
        """Fold one attempt into its delivery entry; True when the delivery is final."""
        stamp = now_stamp()
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
        elif job.unrecorded and not job.flush_due:
            # Other deliveries of this event still run: record this outcome shortly, not at their end.
            job.flush_due = True
            self._spawn(self._flush_soon(job))

    async def _flush_soon(self, job: EventJob) -> None:
        await asyncio.sleep(FLUSH_AFTER_S)
        job.flush_due = False
        if job.unrecorded and not job.gone:
            await self._write(job, final=False)

    def _recorded(self, job: EventJob, count: int) -> None:
        """``count`` of ``job``'s unrecorded outcomes are written (or will never be)."""
        job.unrecorded -= count
        self._unrecorded -= count
        if self._unrecorded < self.max_unrecorded:
            self._capacity.set()

    async def _acquire_slots(self, job: EventJob, state: WebhookState, key: tuple[str, str]) -> None:
        """The webhook's own slot, then a global one: attempts queued behind a slow webhook hold no
        global slot."""
        assert state.limiter is not None
        await state.limiter.acquire()
        self._queued += 1
        try:
            await self._global.acquire(key)
        except BaseException:
            state.limiter.release()
            raise
        finally:
            self._dequeued()

    async def _write(self, job: EventJob, *, final: bool) -> None:
        """Write the job's status; a transient API error is retried until it is written or the event is gone."""
        async with job.write_lock:
            failures = 0
            while not job.gone:
                if not self._leading.is_set():
                    await self._leading.wait()  # only the Lease holder writes (aborted if another took it)
                    failures = 0
                # Built anew for every try: a retry writes what is current, not what failed to be written.
                phase = event_phase(job.deliveries)
                if final and phase not in FINAL_PHASES:
                    return
                status = self._status(job, phase)
                pending = job.unrecorded  # outcomes this status carries
                if job.written == status:
                    self._recorded(job, pending)
                    break
                slow = asyncio.get_running_loop().call_later(WRITE_SLOW_S, self._recording.clear)
                try:
                    await self.kube.merge_patch(event_path(job.namespace, job.name, "status"), {"status": status})
                except (ApiError, OSError) as exc:
                    if isinstance(exc, ApiError) and exc.status == 404:
                        self._recording.set()
                        job.gone = True
                        self._recorded(job, job.unrecorded)
                        return
                    if not is_transient(exc):
                        self._recording.set()
                        self._recorded(job, job.unrecorded)
                        log.error("status of %s/%s not written: %s", job.namespace, job.name, exc)
                        return
                    self._recording.clear()
                    failures += 1
                    delay = backoff_delay(failures, retry_after=retry_after_of(exc))
                    log.warning(
                        "writing status of %s/%s failed (%s); try %d in %.1fs",
                        *(job.namespace, job.name, exc, failures + 1, delay),
                    )
                    with contextlib.suppress(TimeoutError):  # leading again after an outage: at once
                        await asyncio.wait_for(self._resumed.wait(), delay)
                    continue
                finally:
                    slow.cancel()
                self.status_writes += 1
                self._recording.set()
                self._recorded(job, pending)
                job.written = {**status, "deliveries": [dict(d) for d in job.deliveries]}
                job.conditions = status["conditions"]
                break
            else:
                return
            if phase in FINAL_PHASES and not job.final_written and job.completion_time is not None:
                job.final_written = True
                self._completed(job.uid, job.namespace, job.name, phase, job.completion_time)

    def _status(self, job: EventJob, phase: str) -> dict[str, Any]:
        delivered = delivered_summary(job.deliveries)
        status: dict[str, Any] = {
            "phase": phase,
            "deliveries": job.deliveries,
            "delivered": delivered,
            "completionTime": None,
            "conditions": event_conditions(
                job.conditions, phase=phase, delivered=delivered, generation=job.generation, now=now()
            ),
        }
        if job.generation is not None:
            status["observedGeneration"] = job.generation
        if phase in FINAL_PHASES:
            job.completion_time = job.completion_time or format_time(now())
            status["completionTime"] = job.completion_time
        if job.redelivery is not None:
            status["redelivery"] = job.redelivery
        if job.replay is not None:
            status["replay"] = job.replay
        return status

    # -- events waiting outside memory ---------------------------------------------------
    def _park(self, job: EventJob, parks: list[_Park]) -> None:
        webhooks = tuple(park.webhook for park in parks)
        for webhook in webhooks:
            if self.index.get(job.namespace, webhook) is not None:
                self.metrics.gauges(job.namespace, webhook).pending.inc()
        self._parked.park(
            job.uid,
            job.namespace,
            job.name,
            min(park.due for park in parks),
            busy=[park.busy for park in parks if park.busy is not None],
            webhooks=webhooks,
        )
        for park in parks:
            if park.order is not None:
                self._order_parked.add(job.uid, park.order, job.order)
                if self._order_task is None:
                    self._order_task = asyncio.ensure_future(self._order_loop())
        self._parked_changed.set()
        if self._wake_task is None:
            self._wake_task = asyncio.ensure_future(self._wake_loop())

    def _unpark(self, uid: str, *, gone: bool = False) -> None:
        """Out of the parked set (to be started, or ``gone``: deleted, its places in the order freed)."""
        parked = self._parked.discard(uid)
        if parked is not None:
            self._uncount(parked)
        if gone:
            for webhook, key in self._order_parked.pop(uid):
                self._unorder(webhook, key)

    def _settle_order_places(self, uid: str) -> None:
        """After a parked event was read again (and maybe started): a place its job takes up again stays
        (``ordering.add`` is idempotent; the delivery frees it when final); any other is freed."""
        job = self._jobs.get(uid)
        for webhook, key in self._order_parked.pop(uid):
            current = self.index.get(webhook[0], webhook[1])
            if (
                job is not None
                and current is not None
                and current.uid == webhook[2]
                and any(
                    d.get("webhook") == webhook[1] and d.get("outcome") not in FINAL_OUTCOMES for d in job.deliveries
                )
            ):
                continue
            self._unorder(webhook, key)

    def _wake_in_order(self, webhook: WebhookKey) -> None:
        """Read again the parked deliveries of ``webhook`` that are near its head now."""
        if not self.order_ready.is_set() or not self._leading.is_set():
            return
        for key in self.ordering.first(webhook, self.max_ordered_in_memory):
            uid = self._order_parked.uid_at(webhook, key)
            if uid is not None:
                self._wake_parked(uid)

    def _wake_parked(self, uid: str) -> None:
        parked = self._parked.discard(uid)
        if parked is not None:  # else already being read
            self._spawn(self._wake(uid, parked))

    async def _order_loop(self) -> None:
        """Every second: parked Ordered deliveries near their head come back; so do all of a webhook that
        is no longer Ordered (or deleted, disabled, recreated): they are then delivered or ended as usual."""
        while not self._stopping.is_set():
            await asyncio.sleep(ORDER_RECHECK_S)
            for webhook in self._order_parked.webhooks():
                state = self.index.get(webhook[0], webhook[1])
                if state is None or state.uid != webhook[2] or not state.spec.ordered:
                    # Due now: the wake loop reads them a few at a time, as the engine has room.
                    for uid in self._order_parked.uids_of(webhook):
                        parked = self._parked.discard(uid)
                        if parked is not None:
                            self._parked.park(uid, parked.namespace, parked.name, 0.0, webhooks=parked.webhooks)
                    self._parked_changed.set()
                else:
                    self._wake_in_order(webhook)

    def _uncount(self, parked: Parked) -> None:
        for webhook in parked.webhooks:
            if self.index.get(parked.namespace, webhook) is not None:
                self.metrics.gauges(parked.namespace, webhook).pending.dec()

    async def _wake_loop(self) -> None:
        """Read parked events again when they are due, a few at a time, while the engine has capacity."""
        while not self._stopping.is_set():
            self._parked_changed.clear()
            await self._leading.wait()
            await self.wait_for_capacity()
            woken = self._parked.pop_due(now().timestamp())
            if woken is None:
                due = self._parked.next_due()
                timeout = 3600.0 if due is None else min(max(0.001, due - now().timestamp()), 3600.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._parked_changed.wait(), timeout=timeout)
                continue
            await self._waking.acquire()
            self._spawn(self._wake(*woken, acquired=True))

    async def _wake(self, uid: str, parked: Parked, *, acquired: bool = False) -> None:
        """Read a parked event and hand it to on_event as the watch would: it resumes from its status."""
        self._uncount(parked)
        self._reading[uid] = None
        try:
            await self._leading.wait()
            body = await with_retries(
                lambda: self.kube.get(event_path(parked.namespace, parked.name)),
                what=f"reading event {parked.namespace}/{parked.name}",
                give_up=self._stopping.is_set,
            )
        except (ApiError, OSError) as exc:
            log.warning(
                "event %s/%s not read (%s); trying again in %.0fs", parked.namespace, parked.name, exc, WAKE_RETRY_S
            )
            if uid not in self._jobs and uid not in self._parked and not self._stopping.is_set():
                self._parked.park(
                    uid, parked.namespace, parked.name, now().timestamp() + WAKE_RETRY_S, webhooks=parked.webhooks
                )
                for webhook in parked.webhooks:
                    if self.index.get(parked.namespace, webhook) is not None:
                        self.metrics.gauges(parked.namespace, webhook).pending.inc()
                self._parked_changed.set()
            return
        finally:
            requested = self._reading.pop(uid, None)  # after a failed read, the next read sees the request
            if acquired:
                self._waking.release()
        if body is not None and (body.get("metadata") or {}).get("uid") == uid:
            await self.on_event("MODIFIED", body)
        if requested is not None:
            await self.on_event("MODIFIED", requested)
        if uid not in self._parked:  # parked again (nothing changed) keeps its places
            self._settle_order_places(uid)

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
        # Test payloads of all webhooks share one key of their own in the fair queue.
        await self._global.acquire(TEST_PAYLOAD_SLOT_KEY)
        try:
            result = await send(
                self.client, state, body, message_id(event_id, state.uid), timeout_s=state.spec.retry.timeout_seconds
            )
        finally:
            self._global.release(TEST_PAYLOAD_SLOT_KEY)
        outcome: dict[str, Any] = {"event": event, "durationMs": round(result.duration_s * 1000)}
        if result.status_code is not None:
            outcome["statusCode"] = result.status_code
        if result.error:
            outcome["error"] = result.error
        return outcome

    # -- retention ----------------------------------------------------------------------
    def _expire_later(self, body: dict[str, Any]) -> None:
        meta, status = body["metadata"], body.get("status") or {}
        self._completed(
            meta["uid"], meta["namespace"], meta["name"], str(status.get("phase")), status.get("completionTime")
        )

    def _completed(self, uid: str, namespace: str, name: str, phase: str, completion_time: str | None) -> None:
        # completionTime itself (whole seconds), not the clock: the final write and every relist that
        # sees it give the same deadline, so the expiry plan holds one entry per event.
        completed = parse_time(completion_time) or now()
        self.retention.completed(uid, namespace, name, phase, completed.timestamp())
        self._expiry_changed.set()

    def _push_expiry(self, deadline: float, uid: str, namespace: str, name: str) -> None:
        if self.retention.schedule(deadline, uid, namespace, name):
            self._expiry_changed.set()

    async def expiry_loop(self) -> None:
        """Delete completed events once their TTL has passed or their namespace is over the cap
        (uid-guarded, so a recreated name is safe)."""
        while True:
            self._expiry_changed.clear()
            due = self.retention.pop_due(now().timestamp())
            if due is None:
                deadline = self.retention.next_deadline()
                timeout = 3600.0 if deadline is None else min(max(0.0, deadline - now().timestamp()), 3600.0)
                try:
                    await asyncio.wait_for(self._expiry_changed.wait(), timeout=max(timeout, 0.001))
                except TimeoutError:
                    pass
                continue
            if due.uid in self._jobs:
                continue  # redelivered meanwhile; it is counted again when it completes
            await self._deleting.acquire()
            self._spawn(self._delete_expired(due.uid, due.namespace, due.name))

    async def _delete_expired(self, uid: str, namespace: str, name: str) -> None:
        try:
            await self._leading.wait()
            await with_retries(
                lambda: self.kube.delete(event_path(namespace, name), uid=uid),
                what=f"deleting expired event {namespace}/{name}",
            )
        except (ApiError, OSError) as exc:
            log.error("expired event %s/%s not deleted: %s", namespace, name, exc)
        finally:
            self._deleting.release()

    # -- stopping -----------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Stop taking work and let attempts already sent finish and be recorded, for at most ``grace_s``.

        Deliveries waiting for a first attempt or a retry stay as their status records them; the next
        leader resumes them. Whatever is still running after the grace period is cancelled.
        """
        self._stopping.set()
        self._capacity.set()
        tasks = list(self._tasks)
        if tasks and grace_s > 0:
            log.info("waiting up to %.0fs for %d event(s) with attempts in flight", grace_s, len(self._jobs))
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            if pending:
                log.warning(
                    "%d event(s) still in flight after %.0fs; their attempts are repeated later", len(pending), grace_s
                )
        await self.abort()

    def suspend(self) -> None:
        """The Lease is lost: no attempt starts, nothing is written or read for work, until ``resume``
        (this process leads again, nobody having led meanwhile) or ``abort`` (someone else did)."""
        self._leading.clear()
        self._resumed = asyncio.Event()

    def resume(self) -> None:
        """Leading again in the same term: outcomes answered meanwhile are written, work goes on."""
        self._leading.set()
        self._resumed.set()
        self._capacity.set()

    @property
    def suspended(self) -> bool:
        return not self._leading.is_set()

    async def abort(self) -> None:
        """Cancel everything at once (the Lease is lost: nothing may be written any more)."""
        self._stopping.set()
        self._capacity.set()
        tasks = list(self._tasks)
        for loop in (self._wake_task, self._order_task):
            if loop is not None:
                tasks.append(loop)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- introspection ------------------------------------------------------------------
    @property
    def active_jobs(self) -> int:
        return len(self._jobs)

    @property
    def parked_events(self) -> int:
        return len(self._parked)


NOT_READY = "webhook not Ready"
# No namespace is empty, so this key is no webhook's.
TEST_PAYLOAD_SLOT_KEY = ("", "test payloads")


def waiting_reason(state: WebhookState | None) -> str | None:
    """Why a delivery cannot be attempted now: None (it can), NOT_READY (it waits), else why it ends."""
    if state is None:
        return "webhook deleted"
    if not state.spec.enabled:
        return "webhook disabled"
    if state.suspended:
        return f"webhook auto-disabled ({state.auto_disable.get('reason', '')}); resume it to deliver again"
    if not state.deliverable:
        return NOT_READY
    return None


def rate_key(state: WebhookState) -> tuple[str, str, str, str]:
    """The ParkedEvents queue of deliveries waiting outside memory for ``state``'s rate limit."""
    return ("rate-limit", state.namespace, state.name, state.uid)


@dataclass(frozen=True)
class _Park:
    """A delivery that waits outside memory: until ``due`` (epoch seconds), or room at webhook ``busy``."""

    due: float
    webhook: str
    busy: Hashable | None = None
    record: bool = False  # the event's status must hold this delivery before it leaves memory
    order: WebhookKey | None = None  # an Ordered delivery far from its head: its place is kept there


class _Stopped(Exception):
    """An attempt was about to start while the engine is stopping."""


def format_time_precise(delay_s: float) -> str:
    """When a retry is due, to the millisecond, so short backoffs survive a restart unchanged."""
    return format_time_ms(now() + dt.timedelta(seconds=delay_s))
