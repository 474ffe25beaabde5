"""Bus mode's I/O: the JetStream streams and consumers, fan-out, the shared delivery loop, health folding.

Every replica fans out and delivers (pull consumers shared by all: each message goes to one of
them); only the Lease holder folds request-log records into ``status.health``. The attempt itself
(body, signatures, SSRF-checked transport, per-webhook and global limits, metrics) is the CR
engine's ``attempt.send`` with the same retry policy functions. Design: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from webhook_operator.bus.config import BusSettings, connect_options
from webhook_operator.bus.messages import (
    DELIVER_CONSUMER,
    DELIVERIES_PREFIX,
    DELIVERIES_STREAM,
    EVENTS_PREFIX,
    EVENTS_STREAM,
    FANOUT_CONSUMER,
    FINAL,
    HEALTH_CONSUMER,
    LOG_PREFIX,
    LOG_STREAM,
    MSG_ID_HEADER,
    BadMessage,
    Delivery,
    deliveries_subject,
    derived_event_id,
    events_subject,
    log_record,
    log_record_id,
    log_subject,
    log_subject_key,
    parse_published,
)
from webhook_operator.delivery.attempt import AttemptResult, send
from webhook_operator.delivery.engine import NOT_READY, waiting_reason
from webhook_operator.delivery.transport import DeliveryClient
from webhook_operator.filter import filter_input
from webhook_operator.index import WebhookIndex, WebhookState
from webhook_operator.metrics import Metrics
from webhook_operator.model import format_time, format_time_ms, now, parse_time
from webhook_operator.retry import next_backoff, should_retry, status_class
from webhook_operator.settings import Settings
from webhook_operator.signing import build_body, format_created_at, message_id

if TYPE_CHECKING:
    from webhook_operator.webhooks import WebhookController

log = logging.getLogger(__name__)

DELIVERIES_DEDUPE_S = 5 * 60.0  # a fan-out repeated after a crash publishes the same ids within this
MAX_ACK_PENDING = 20_000  # messages out at once per consumer, across replicas
FANOUT_BATCH = 100
RECONNECT_S = 2.0
NOT_READY_RECHECK_S = 1.0
PUBLISH_TIMEOUT_S = 5.0
FOLD_ACK_TIMEOUT_S = 2.0
HEALTH_ACK_WAIT_FACTOR = 2  # the health consumer's ack wait, in --event-bus-ack-wait
STREAM_EXISTS_OTHERWISE = 10058  # JetStream's "stream name already in use with a different configuration"
# "no suitable peers for placement", "insufficient resources", "replicas > 1 not supported in non-clustered mode"
PLACEMENT_ERRORS = frozenset({10005, 10023, 10074})


class BusUnavailable(Exception):
    """Not connected to NATS (yet, or any more)."""


class StreamRefused(Exception):
    """JetStream would not create or update a stream as configured."""


class BusWorker:
    def __init__(
        self,
        settings: Settings,
        bus: BusSettings,
        index: WebhookIndex,
        metrics: Metrics,
        client: DeliveryClient,
        replica: str,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.index = index
        self.metrics = metrics
        self.client = client
        self.replica = replica
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.ready = asyncio.Event()  # connected, streams and consumers in place
        self._global = asyncio.Semaphore(settings.max_concurrency)
        # Delivery messages held at once by this replica (attempting, or waiting for a slot).
        self._held = asyncio.Semaphore(settings.max_concurrency * 2)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._folded: Msg | None = None  # last health record folded into memory and not acked yet
        # Stream sequences of health records folded and not known to be acked: one whose ack was lost (a
        # NATS node gone) comes back after the ack wait and is not counted again.
        self._counted: set[int] = set()
        # Health consumer deliveries arrive with consecutive consumer sequences; a gap is a record lost on
        # its way (its NATS node gone), and acking past it (AckPolicy.ALL) would drop it: no ack until
        # the ack wait has brought it back.
        self._last_delivery = 0
        self._hold_acks_until = 0.0
        self._held_since: dict[int, tuple[Msg, float]] = {}  # messages held (by id()), for in-progress acks
        self._stopping = asyncio.Event()
        self._stream_created = ""
        self._connecting = asyncio.Lock()

    # -- connection and topology ---------------------------------------------------------
    async def connect(self) -> None:
        """Connect (retrying until it works) and declare the streams and consumers; idempotent."""
        async with self._connecting:
            if not self.ready.is_set():
                await self._connect()

    async def _connect(self) -> None:
        failures = 0
        while self.nc is None:
            try:
                self.nc = await nats.connect(**connect_options(self.bus))  # type: ignore[arg-type]
            except Exception as exc:  # nats-py raises plain errors for refused connections and bad credentials
                failures += 1
                log.warning("bus: cannot connect to %s (%s); trying again", ", ".join(self.bus.servers), exc)
                await asyncio.sleep(min(RECONNECT_S * failures, 15.0))
        self.js = self.nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
        # The reply subscription of publish_async, set up once here: set up by two first callers at
        # once, it would lose the first one's acks.
        await self.js._init_async_reply()
        while True:
            try:
                await self._declare()
                break
            except Exception as exc:
                log.warning("bus: declaring streams failed (%s); trying again", exc)
                await asyncio.sleep(RECONNECT_S)
        self.ready.set()

    def connected(self) -> bool:
        """Streams declared and the connection up (a reconnecting client is not)."""
        return self.ready.is_set() and self.nc is not None and self.nc.is_connected

    async def _declare(self) -> None:
        assert self.js is not None
        bus = self.bus
        streams = [
            StreamConfig(
                name=EVENTS_STREAM,
                subjects=[EVENTS_PREFIX + "*"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=bus.dedupe_window_s,
                discard=DiscardPolicy.NEW,
                num_replicas=bus.replicas,
            ),
            StreamConfig(
                name=DELIVERIES_STREAM,
                subjects=[DELIVERIES_PREFIX + "*.*"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                duplicate_window=DELIVERIES_DEDUPE_S,
                discard=DiscardPolicy.NEW,
                num_replicas=bus.replicas,
            ),
            StreamConfig(
                name=LOG_STREAM,
                subjects=[LOG_PREFIX + "*.*"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=bus.log_max_age_s,
                max_bytes=bus.log_max_bytes,
                max_msgs_per_subject=bus.log_max_per_webhook,
                discard=DiscardPolicy.OLD,
                duplicate_window=60.0,
                num_replicas=bus.replicas,
            ),
        ]
        for config in streams:
            info = await self._declare_stream(config)
            if config.name == EVENTS_STREAM:
                self._stream_created = info.created.isoformat() if info.created else ""
        namespaces = self.settings.namespaces
        event_filter = [events_subject(ns) for ns in namespaces]
        delivery_filter = [f"{DELIVERIES_PREFIX}{ns}.*" for ns in namespaces]
        consumers = [
            (EVENTS_STREAM, FANOUT_CONSUMER, event_filter, -1),
            (DELIVERIES_STREAM, DELIVER_CONSUMER, delivery_filter, -1),
            (LOG_STREAM, HEALTH_CONSUMER, [f"{LOG_PREFIX}{ns}.*" for ns in namespaces], -1),
        ]
        for stream, durable, filters, max_deliver in consumers:
            consumer = ConsumerConfig(
                durable_name=durable,
                # Health acks a folded batch with one ack of its last record.
                ack_policy=AckPolicy.ALL if durable == HEALTH_CONSUMER else AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=bus.ack_wait_s * (HEALTH_ACK_WAIT_FACTOR if durable == HEALTH_CONSUMER else 1),
                max_deliver=max_deliver,
                max_ack_pending=MAX_ACK_PENDING,
                max_waiting=512,
            )
            if len(filters) == 1:
                consumer.filter_subject = filters[0]
            elif filters:
                consumer.filter_subjects = filters
            try:
                await self.js.add_consumer(stream, consumer)
            except nats.js.errors.BadRequestError as exc:  # e.g. a setting JetStream cannot change in place
                log.warning("bus: consumer %s kept as it is (%s)", durable, exc.description)

    async def _declare_stream(self, config: StreamConfig) -> StreamInfo:
        """Create the stream, or bring an existing one with an older configuration (another replica
        count, say) up to date; a refusal is raised with what to change."""
        assert self.js is not None and config.name is not None
        try:
            return await self.js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != STREAM_EXISTS_OTHERWISE:
                raise StreamRefused(declare_problem(config.name, self.bus.replicas, exc)) from exc
        current = (await self.js.stream_info(config.name)).config
        if current.num_replicas != config.num_replicas:
            log.info(
                "bus: stream %s: replicas %s -> %s (--event-bus-stream-replicas)",
                config.name,
                current.num_replicas,
                config.num_replicas,
            )
        try:
            return await self.js.update_stream(config)
        except nats.js.errors.APIError as exc:
            raise StreamRefused(declare_problem(config.name, self.bus.replicas, exc)) from exc

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, then fan out and deliver until cancelled (on every replica)."""
        await self.connect()
        assert self.js is not None
        log.info("bus: consuming events and deliveries from %s", ", ".join(self.bus.servers))
        await asyncio.gather(self._fanout_loop(), self._deliver_loop(), self._keep_alive_loop())

    async def _keep_alive_loop(self) -> None:
        """In-progress acks for messages held a third of the ack wait, so a slow attempt (or one waiting for
        its webhook's slot) is not handed to another replica; a dead replica's return after the ack wait."""
        loop = asyncio.get_running_loop()
        keepalive = self.bus.ack_wait_s / 3
        while True:
            await asyncio.sleep(keepalive / 2)
            due = loop.time() - keepalive
            for key, (msg, since) in list(self._held_since.items()):
                if since <= due and key in self._held_since:
                    self._held_since[key] = (msg, loop.time())
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    async def _pull(self, durable: str, stream: str) -> JetStreamContext.PullSubscription:
        assert self.js is not None
        while True:
            try:
                return await self.js.pull_subscribe_bind(durable, stream)
            except Exception as exc:
                log.warning("bus: binding consumer %s failed (%s); trying again", durable, exc)
                await asyncio.sleep(RECONNECT_S)

    async def _fetch(self, sub: JetStreamContext.PullSubscription, batch: int, wait_s: float) -> list[Msg]:
        try:
            return await sub.fetch(batch, timeout=wait_s)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except Exception as exc:  # disconnected, server restarting: the client reconnects by itself
            if not self._stopping.is_set():
                log.warning("bus: fetching from %s failed (%s)", stream_of(sub), exc)
                await asyncio.sleep(1.0)
            return []

    async def _fanout_loop(self) -> None:
        sub = await self._pull(FANOUT_CONSUMER, EVENTS_STREAM)
        while not self._stopping.is_set():
            msgs = await self._fetch(sub, FANOUT_BATCH, 1.0)
            if msgs:
                await asyncio.gather(*(self._fan_out(m) for m in msgs))

    async def _fan_out(self, msg: Msg) -> None:
        """One event → one delivery message per matching webhook, stored before the event is acked."""
        try:
            published = parse_published(msg.subject, msg.data)
        except BadMessage as exc:
            await self._terminate(msg, exc)
            return
        meta = msg.metadata
        event_id = (msg.headers or {}).get(MSG_ID_HEADER) or derived_event_id(
            self._stream_created, meta.sequence.stream
        )
        created_at = format_created_at(meta.timestamp)
        payload = filter_input(published.event, event_id, created_at, published.data)
        deliveries = [
            Delivery(
                namespace=published.namespace,
                webhook=target.name,
                webhook_uid=target.uid,
                id=message_id(event_id, target.uid),
                event=published.event,
                event_id=event_id,
                created_at=created_at,
                data=published.data,
            )
            for target in self.index.subscribers(published.namespace, published.event, payload)
        ]
        try:
            # Pipelined: every delivery is sent, then the acks are awaited together.
            await self._stored([await self._publish_delivery(d) for d in deliveries])
            await msg.ack()
        except Exception as exc:
            # Not acked: the event comes back (here or to another replica) and its deliveries are
            # published again under the same ids, which the deliveries stream de-duplicates.
            log.warning("bus: fan-out of an event in %s failed (%s); it is retried", published.namespace, exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _publish_delivery(self, delivery: Delivery) -> asyncio.Future[Any]:
        assert self.js is not None
        return await self.js.publish_async(
            deliveries_subject(delivery.namespace, delivery.webhook),
            delivery.encode(),
            headers={MSG_ID_HEADER: delivery.id},
        )

    @staticmethod
    async def _stored(acks: list[asyncio.Future[Any]]) -> None:
        """Wait for JetStream's acks of pipelined publications; raise if one failed or is late."""
        if not acks:
            return
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                for ack in acks:
                    await ack  # raises the stream's error, e.g. maximum messages exceeded
        finally:
            for ack in acks:
                ack.cancel()  # no-op for the answered ones

    async def _terminate(self, msg: Msg, exc: BadMessage) -> None:
        self.metrics.bus_terminated.labels(exc.reason).inc()
        log.warning("bus: message on %s terminated (%s): %s", msg.subject[:200], exc.reason, exc)
        with contextlib.suppress(Exception):
            await msg.term()

    async def _deliver_loop(self) -> None:
        sub = await self._pull(DELIVER_CONSUMER, DELIVERIES_STREAM)
        limit = self.settings.max_concurrency * 2
        while not self._stopping.is_set():
            await self._held.acquire()  # at least one free place before asking for more
            self._held.release()
            free = max(1, min(limit, _free(self._held)))
            msgs = await self._fetch(sub, free, 1.0)
            for msg in msgs:
                await self._held.acquire()
                self._spawn(self._deliver(msg))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, msg: Msg) -> None:
        self._held_since[id(msg)] = (msg, asyncio.get_running_loop().time())
        try:
            await self._deliver_one(msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacked: another attempt after the ack wait, with the same webhook-id.
            log.exception("bus: delivery on %s failed unexpectedly", msg.subject[:200])
        finally:
            self._held_since.pop(id(msg), None)
            self._held.release()

    async def _deliver_one(self, msg: Msg) -> None:
        try:
            delivery = Delivery.decode(msg.data)
        except BadMessage as exc:
            await self._terminate(msg, exc)
            return
        while True:
            state = self.index.get(delivery.namespace, delivery.webhook)
            if state is not None and state.uid != delivery.webhook_uid:
                state = None  # deleted and created again: not the webhook this event was for
            ending = waiting_reason(state)
            if ending is None:
                break
            if ending != NOT_READY:
                await self._record(msg, delivery, None, outcome="Failed", attempts=0, error=f"not delivered: {ending}")
                await msg.ack()
                return
            if self._stopping.is_set():
                return  # not acked: redelivered after the ack wait
            await asyncio.sleep(NOT_READY_RECHECK_S)
        assert state is not None
        attempts = max(1, msg.metadata.num_delivered)  # a repeat after a crash counts as an attempt
        result = await self._attempt(delivery, state)
        if result is None:
            return  # stopping before sending: redelivered after the ack wait
        policy = state.spec.retry
        live = self._live(state)
        if result.succeeded:
            await self._final(msg, delivery, state, result, "Succeeded", attempts, live)
            return
        if should_retry(attempts, policy, status=result.status_code, failure=result.failure):
            delay = next_backoff(attempts, policy, retry_after=result.retry_after)
            due = format_time_ms(now() + dt.timedelta(seconds=delay))
            await self._record(msg, delivery, result, outcome="Retrying", attempts=attempts, next_attempt_time=due)
            await msg.nak(delay=delay)
            return
        await self._final(msg, delivery, state, result, "Failed", attempts, live)

    async def _final(
        self,
        msg: Msg,
        delivery: Delivery,
        state: WebhookState,
        result: AttemptResult,
        outcome: str,
        attempts: int,
        live: bool,
    ) -> None:
        if live:
            self.metrics.delivery_final(delivery.namespace, state.name, delivery.event, outcome == "Succeeded")
        # The record first, then the ack: a crash in between repeats the attempt, never loses it.
        await self._record(msg, delivery, result, outcome=outcome, attempts=attempts)
        await msg.ack()

    async def _record(
        self,
        msg: Msg,
        delivery: Delivery,
        result: AttemptResult | None,
        *,
        outcome: str,
        attempts: int,
        error: str = "",
        next_attempt_time: str | None = None,
    ) -> None:
        """Publish the request-log record, retrying while the bus is away (the message stays held)."""
        assert self.js is not None
        payload = log_record(
            delivery,
            outcome=outcome,
            attempts=attempts,
            time=format_time_ms(now()),
            status_code=result.status_code if result else None,
            duration_ms=round(result.duration_s * 1000) if result else 0,
            error=result.error if result else error,
            response_body=result.response_body if result else "",
            next_attempt_time=next_attempt_time,
            replica=self.replica,
        )
        record_id = log_record_id(delivery, msg.metadata.num_delivered, outcome)
        tries = 0
        while True:
            try:
                ack = await self.js.publish_async(
                    log_subject(delivery.namespace, delivery.webhook), payload, headers={MSG_ID_HEADER: record_id}
                )
                await self._stored([ack])
                return
            except Exception as exc:
                tries += 1
                if self._stopping.is_set() or tries >= 30:
                    raise
                log.warning("bus: writing the request log failed (%s); try %d", exc, tries + 1)
                await asyncio.sleep(min(tries, 5))

    def _live(self, state: WebhookState) -> bool:
        current = self.index.get(state.namespace, state.name)
        return current is not None and current.uid == state.uid

    async def _attempt(self, delivery: Delivery, state: WebhookState) -> AttemptResult | None:
        body = build_body(
            hook_id=state.hook_id,
            event=delivery.event,
            created_at=delivery.created_at,
            event_id=delivery.event_id,
            data=delivery.data,
        )
        assert state.limiter is not None
        async with state.limiter, self._global:
            if self._stopping.is_set():
                return None
            self.metrics.in_flight.labels(state.namespace, state.name).inc()
            try:
                result = await send(self.client, state, body, delivery.id, timeout_s=state.spec.retry.timeout_seconds)
            finally:
                if self._live(state):
                    self.metrics.in_flight.labels(state.namespace, state.name).dec()
        if self._live(state):
            self.metrics.attempt(
                state.namespace, state.name, status_class(result.status_code, result.failure), result.duration_s
            )
        return result

    # -- health (the Lease holder only) -----------------------------------------------------
    async def fold_health(self, webhooks: WebhookController) -> None:
        """Fold final outcomes of every replica into health; acked once flushed to status."""
        await self.ready.wait()
        sub = await self._pull(HEALTH_CONSUMER, LOG_STREAM)
        # Another leader may have read and acked in between: nothing of an earlier term is trusted.
        self._folded, self._counted, self._last_delivery, self._hold_acks_until = None, set(), 0, 0.0
        interval = self.settings.health_flush_s
        loop = asyncio.get_running_loop()
        while True:
            # Records of one flush interval, however many batches they come in: one status write per
            # webhook per interval, as in CR mode.
            flush_at = loop.time() + interval
            while (left := flush_at - loop.time()) > 0:
                msgs = await self._fetch(sub, 1000, max(left, 0.05))
                for msg in msgs:
                    sequence = msg.metadata.sequence.stream
                    delivery = msg.metadata.sequence.consumer
                    if self._last_delivery and delivery != self._last_delivery + 1:
                        self._hold_acks_until = loop.time() + 2 * HEALTH_ACK_WAIT_FACTOR * self.bus.ack_wait_s
                        log.warning("bus: a health record was lost on its way; acks wait for its redelivery")
                    self._last_delivery = delivery
                    if sequence not in self._counted:
                        self._counted.add(sequence)
                        fold_record(self.index, msg.subject, msg.data, on_attempt=webhooks.attempt_done)
                    if self._folded is None or sequence > self._folded.metadata.sequence.stream:
                        self._folded = msg
            if self._folded is None:
                continue
            try:
                await webhooks.flush_health()
            except Exception:
                log.exception("bus: health flush failed")
            await self.ack_folded()

    async def ack_folded(self) -> None:
        """Ack every record folded so far (AckPolicy.ALL); called once they are written to status, e.g.
        after the final health flush of a clean shutdown, so the next leader does not count them again."""
        folded = self._folded
        if folded is None or asyncio.get_running_loop().time() < self._hold_acks_until:
            return
        try:
            await folded.ack_sync(timeout=FOLD_ACK_TIMEOUT_S)
        except Exception as exc:
            # Kept: acked again after the next flush; the records it covers may come back meanwhile.
            log.warning("bus: acknowledging health records failed (%s); trying again after the next flush", exc)
            return
        if self._folded is folded:
            self._folded = None
        acked = folded.metadata.sequence.stream
        self._counted = {sequence for sequence in self._counted if sequence > acked}

    # -- stopping ----------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """No new messages; attempts under way get ``grace_s`` to finish and be recorded."""
        self._stopping.set()
        tasks = list(self._tasks)
        if tasks and grace_s > 0:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            with contextlib.suppress(Exception):
                await self.nc.close()


def fold_record(
    index: WebhookIndex,
    subject: str,
    payload: bytes,
    on_attempt: Callable[[WebhookState, AttemptResult], None] | None = None,
) -> bool:
    """Fold one request-log record (of any replica) into its webhook: every attempt goes to ``on_attempt``
    (auto-disable follows failures), a final outcome into health; True when counted in health."""
    key = log_subject_key(subject)
    try:
        record = json.loads(payload)
    except ValueError:
        return False
    if key is None or not isinstance(record, dict):
        return False
    state = index.get(*key)
    if state is None or state.uid != record.get("webhookUid"):
        return False
    code = record.get("statusCode")
    if on_attempt is not None and int(record.get("attempts") or 0) > 0:
        status = code if isinstance(code, int) else None
        failure = None if status is not None else "error"
        on_attempt(state, AttemptResult(status, failure, str(record.get("error") or ""), 0.0, "", None))
    if record.get("outcome") not in FINAL or int(record.get("attempts") or 0) == 0:
        return False  # "not delivered" (webhook deleted, disabled): no attempt, not counted, as in CR mode
    when = parse_time(record.get("time")) or now()
    state.health.record(
        when, succeeded=record["outcome"] == "Succeeded", status_code=code if isinstance(code, int) else None
    )
    state.health_dirty = True
    return True


def declare_problem(stream: str, replicas: int, error: nats.js.errors.APIError) -> str:
    """Why a stream was refused, and, when it cannot be placed, what the cluster needs (pure)."""
    text = f"stream {stream} refused: {error.description or 'no reason given'} (JetStream error {error.err_code})"
    if replicas > 1 and error.err_code in PLACEMENT_ERRORS:
        text += (
            f"; --event-bus-stream-replicas {replicas} needs a NATS cluster of at least {replicas} JetStream"
            " servers (or lower the flag)"
        )
    return text


def _free(semaphore: asyncio.Semaphore) -> int:
    return int(getattr(semaphore, "_value", 1))


def stream_of(sub: Any) -> str:
    return str(getattr(sub, "_stream", "") or "the bus")


Publish = Callable[[str, bytes, dict[str, str]], Awaitable[Any]]
__all__ = ["BusUnavailable", "BusWorker", "fold_record", "format_time"]
