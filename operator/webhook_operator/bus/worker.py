"""Bus mode's I/O: the JetStream streams and consumers, fan-out, the shared delivery loop, health folding.

Every replica fans out and delivers (pull consumers shared by all: each message goes to one of
them); only the Lease holder folds request-log records into ``status.health``. The attempt itself
(body, signatures, SSRF-checked transport, per-webhook and global limits, metrics) is the CR
engine's ``attempt.send`` with the same retry policy functions. Design: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
import orjson
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

from webhook_operator.bus import pull
from webhook_operator.bus.config import BusSettings, connect_options
from webhook_operator.bus.control import (
    CROWDED_FACTOR,
    HOLD_UP_S,
    MAX_PUT_OFF_S,
    ORDER_WINDOW,
    PUT_OFF_WAIT_S,
    ConsumerView,
    answer_time,
    controlled,
    crowded,
    fanned_out_through,
    median,
    ordered_turn,
    put_off_turn,
    quickest_answer,
    sending_share,
    slow,
)
from webhook_operator.bus.messages import (
    BATCH_MAX,
    CONSUMER_PREFIX,
    CONTROLLED_PREFIX,
    CONTROLLED_STREAM,
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
    batch_id,
    batch_subject,
    controlled_consumer,
    controlled_subject,
    decode_deliveries,
    deliveries_subject,
    derived_event_id,
    encode_batch,
    encode_data,
    events_subject,
    log_record,
    log_record_id,
    log_subject,
    log_subject_key,
    parse_published,
    subject_key,
)
from webhook_operator.bus.publish import Publisher
from webhook_operator.delivery.attempt import AttemptResult, send
from webhook_operator.delivery.engine import NOT_READY, RESERVE_FRACTION, waiting_reason
from webhook_operator.delivery.queues import FairSlots
from webhook_operator.delivery.ratelimit import Held, RateBuckets, until_token
from webhook_operator.delivery.transport import DeliveryClient
from webhook_operator.filter import filter_input
from webhook_operator.index import WebhookIndex, WebhookState
from webhook_operator.metrics import Metrics
from webhook_operator.model import format_time, format_time_ms, now, parse_time
from webhook_operator.retry import next_backoff, should_retry, status_class
from webhook_operator.settings import Settings
from webhook_operator.signing import body_with_data, format_created_at, message_id

if TYPE_CHECKING:
    from webhook_operator.webhooks import WebhookController

log = logging.getLogger(__name__)

DELIVERIES_DEDUPE_S = 5 * 60.0  # a fan-out repeated after a crash publishes the same ids within this
MAX_ACK_PENDING = 20_000  # messages out at once per consumer, across replicas
FANOUT_BATCH = 100
RECONNECT_S = 2.0
NOT_READY_RECHECK_S = 1.0
PUBLISH_TIMEOUT_S = 5.0
CONTROL_INTERVAL_S = 1.0  # the Lease holder looks for controlled webhooks and stranded deliveries this often
ORDER_POLL_S = 0.05  # an Ordered webhook waiting for its turn looks again this often
MIN_RATE_WAIT_S = 0.001
FOLD_ACK_TIMEOUT_S = 2.0
CONFIRM_ACK_TIMEOUT_S = 2.0  # an ack waited for before a delivery's places are freed
ANSWERS_KEPT = 21  # answer times kept per webhook for its median
ANSWERS_FRESH_S = 60.0  # a webhook's answer times are forgotten this long after its last answer
HEALTH_ACK_WAIT_FACTOR = 2  # the health consumer's ack wait, in --event-bus-ack-wait
STREAM_EXISTS_OTHERWISE = 10058  # JetStream's "stream name already in use with a different configuration"
# "no suitable peers for placement", "insufficient resources", "replicas > 1 not supported in non-clustered mode"
PLACEMENT_ERRORS = frozenset({10005, 10023, 10074})


class BusUnavailable(Exception):
    """Not connected to NATS (yet, or any more)."""


class PutOff(Exception):
    """A delivery to a slow webhook would hold a place others need (it would wait, or has waited, long for
    its turn; or it would hold up its batch): published on its own instead, due later."""


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
        self.publisher: Publisher | None = None
        self.ready = asyncio.Event()  # connected, streams and consumers in place
        self._global: FairSlots[str] = FairSlots(
            settings.max_concurrency, reserve=int(settings.max_concurrency * RESERVE_FRACTION)
        )
        # Delivery messages held at once by this replica (attempting, or waiting for a slot).
        self._held = asyncio.Semaphore(settings.max_concurrency * 2)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._folded: Msg | None = None  # last health record folded into memory and not acked yet
        self._folded_seq = 0  # its stream sequence
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
        # spec.rateLimit on the controlled path (the Lease holder): one bucket and turn per webhook uid.
        self._buckets = RateBuckets()
        self._per_message = 1  # deliveries in the last batch taken: how many messages the free places ask for
        # Shared-path deliveries waiting for or in an attempt, by webhook uid: with its answer time, whether
        # the next would wait long (control.crowded), and is put off instead of holding a place.
        self._crowd: dict[str, int] = {}
        self._latency: dict[str, collections.deque[float]] = {}  # last answer times by webhook uid
        self._answered: dict[str, float] = {}  # by webhook uid: when its last answered attempt began (monotonic)
        self._sending: dict[str, dict[int, float]] = {}  # attempts under way by webhook uid: their start times
        self._typical: tuple[float, float | None] = (-math.inf, None)  # (worked out at, the quickest answer)
        self._next_turn: dict[str, float] = {}  # by webhook uid: when the last delivery put off is due (monotonic)

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
        # Its reply subscription set up once here, before any publication.
        self.publisher = Publisher(self.nc, timeout_s=PUBLISH_TIMEOUT_S)
        await self.publisher.start()
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
                name=CONTROLLED_STREAM,
                subjects=[CONTROLLED_PREFIX + "*.*"],
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
                return await pull.bind(self.js, durable, stream)
            except Exception as exc:
                log.warning("bus: binding consumer %s failed (%s); trying again", durable, exc)
                await asyncio.sleep(RECONNECT_S)

    async def _fetch(self, sub: JetStreamContext.PullSubscription, batch: int, wait_s: float) -> list[Msg]:
        try:
            return await pull.fetch(sub, batch, wait_s)
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
        """One event → its deliveries stored before the event is acked: one message per controlled webhook,
        and one batch message for the others (a message of its own when there is just one)."""
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
        shared: list[Delivery] = []
        acks: list[asyncio.Future[Any]] = []
        try:
            # Pipelined: every message is sent, then the acks are awaited together.
            for target in self.index.subscribers(published.namespace, published.event, payload):
                delivery = Delivery(
                    namespace=published.namespace,
                    webhook=target.name,
                    webhook_uid=target.uid,
                    id=message_id(event_id, target.uid),
                    event=published.event,
                    event_id=event_id,
                    created_at=created_at,
                    data=published.data,
                    seq=meta.sequence.stream,
                )
                if controlled(self.index.get(delivery.namespace, delivery.webhook)):
                    acks.append(await self._publish(delivery, published.data_json, to_controlled=True))
                else:
                    shared.append(delivery)
            # In webhook-id order: the same batches, under the same ids, whichever replica repeats a fan-out
            # (replicas list subscribers in the order they learnt of the webhooks).
            shared.sort(key=lambda delivery: delivery.id)
            for at in range(0, len(shared), BATCH_MAX):
                chunk = shared[at : at + BATCH_MAX]
                if len(chunk) == 1:
                    acks.append(await self._publish(chunk[0], published.data_json, to_controlled=False))
                    continue
                assert self.publisher is not None
                acks.append(
                    await self.publisher.publish(
                        batch_subject(published.namespace),
                        encode_batch(chunk, published.data_json),
                        headers={MSG_ID_HEADER: batch_id(chunk)},
                    )
                )
            await self._stored(acks)
            await msg.ack()
        except Exception as exc:
            # Not acked: the event comes back (here or to another replica) and its deliveries are
            # published again under the same ids, which the deliveries stream de-duplicates.
            log.warning("bus: fan-out of an event in %s failed (%s); it is retried", published.namespace, exc)
            for ack in acks:
                ack.cancel()
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    async def _publish(
        self, delivery: Delivery, data: bytes | None, *, to_controlled: bool, msg_id: str | None = None
    ) -> asyncio.Future[Any]:
        """One delivery as a message of its own (``data``: its ``encode_data``, if at hand); the ack's future."""
        assert self.publisher is not None
        return await self.publisher.publish(
            self._subject_for(delivery, to_controlled),
            delivery.encode(data),
            headers={MSG_ID_HEADER: msg_id or delivery.id},
        )

    @staticmethod
    def _subject_for(delivery: Delivery, to_controlled: bool) -> str:
        if to_controlled:
            return controlled_subject(delivery.namespace, delivery.webhook)
        return deliveries_subject(delivery.namespace, delivery.webhook)

    @staticmethod
    async def _stored(acks: list[asyncio.Future[Any]]) -> None:
        """Wait for JetStream's acks of pipelined publications; raise if one failed or is late (the
        publisher fails it after ``PUBLISH_TIMEOUT_S``)."""
        try:
            for ack in acks:
                await ack  # raises the stream's error, e.g. maximum messages exceeded, or TimeoutError
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
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            await self._held.acquire()  # at least one free place before asking for more
            self._held.release()
            # A batch takes a place per delivery: ask for about as many messages as there are free places.
            msgs = await self._fetch(sub, max(1, min(limit, _free(self._held)) // self._per_message), 1.0)
            for msg in msgs:
                self._held_since[id(msg)] = (msg, loop.time())  # kept alive while waiting for places too
            try:
                while msgs:
                    msg = msgs[0]
                    try:
                        decoded = decode_deliveries(msg.data)
                    except BadMessage as exc:
                        self._held_since.pop(id(msgs.pop(0)), None)
                        await self._terminate(msg, exc)
                        continue
                    # Every place a message needs, taken here in turn: no batch waits holding part of them.
                    places = min(len(decoded[0]), limit)
                    if decoded[1] is not None:
                        self._per_message = places
                    for taken in range(places):
                        try:
                            await self._held.acquire()
                        except BaseException:
                            for _ in range(taken):
                                self._held.release()
                            raise
                    self._spawn(self._deliver(msgs.pop(0), on_controlled=False, decoded=decoded, taken=places))
            finally:
                for msg in msgs:  # cancelled while waiting: no keep-alive for them (they come back)
                    self._held_since.pop(id(msg), None)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self,
        msg: Msg,
        *,
        on_controlled: bool,
        places: asyncio.Semaphore | None = None,
        decoded: tuple[list[Delivery], bytes | None] | None = None,
        taken: int = 1,
    ) -> None:
        """Deliver one message, then free the ``taken`` places it holds (of ``places``, else this replica's
        shared ones): as long as a batch is not acked, its deliveries keep theirs, so what a killed replica
        sent and had not acked (sent again by another) stays within the places."""
        self._held_since[id(msg)] = (msg, asyncio.get_running_loop().time())
        try:
            if decoded is None:
                try:
                    decoded = decode_deliveries(msg.data)
                except BadMessage as exc:
                    await self._terminate(msg, exc)
                    return
            deliveries, batch_data = decoded
            if batch_data is None:
                await self._deliver_one(msg, deliveries[0], on_controlled=on_controlled)
            else:
                await self._deliver_batch(msg, deliveries, batch_data, side_by_side=taken)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacked: another attempt after the ack wait, with the same webhook-id.
            log.exception("bus: delivery on %s failed unexpectedly", msg.subject[:200])
        finally:
            self._held_since.pop(id(msg), None)
            for _ in range(taken):
                (places or self._held).release()

    async def _deliver_one(self, msg: Msg, delivery: Delivery, *, on_controlled: bool) -> None:
        """Attempt one delivery message (shared path, or the Lease holder's controlled path)."""
        count = pull.delivery_info(msg)[0]
        if delivery.due is not None:
            if count <= 1:
                # A retry from a batch, or a delivery put off: its first receipt waits until it is due.
                wait = (parse_time(delivery.due) or now()) - now()
                await msg.nak(delay=max(0.0, wait.total_seconds()))
                return
            attempts = delivery.after + count - 1
        else:
            attempts = max(1, count)  # a repeat after a crash counts as an attempt
        while True:
            state = self.index.get(delivery.namespace, delivery.webhook)
            if state is not None and state.uid != delivery.webhook_uid:
                state = None  # deleted and created again: not the webhook this event was for
            if state is not None and controlled(state) != on_controlled:
                # On the other path than its webhook's spec asks for now (a spec change, a redeliver or
                # replay published to the deliveries subject, a replica's index behind): moved over.
                await self._forward(msg, delivery, to_controlled=not on_controlled)
                return
            ending = waiting_reason(state)
            if ending is None:
                break
            if ending != NOT_READY:
                await self._record(
                    delivery, None, msg.data, outcome="Failed", attempts=0, error=f"not delivered: {ending}"
                )
                await msg.ack()
                return
            if self._stopping.is_set():
                return  # not acked: redelivered after the ack wait
            await asyncio.sleep(NOT_READY_RECHECK_S)
        assert state is not None
        try:
            if not on_controlled and self._crowded(state):
                raise PutOff
            result = await self._attempt(delivery, state, limited=on_controlled)
        except PutOff:
            meta = msg.metadata
            tag = f"{meta.stream}:{meta.sequence.stream}"
            await self._stored([await self._put_off(state, delivery, None, attempts - 1, tag)])
            await msg.ack()
            return
        if result is None:
            if on_controlled:
                with contextlib.suppress(Exception):
                    await msg.nak()  # the next Lease holder takes it up at once
            return  # stopping before sending: redelivered after the ack wait
        retry = await self._settle(delivery, state, result, attempts, msg.data)
        if retry is not None:
            await msg.nak(delay=retry)
            return
        # Confirmed before its place is freed, as a batch's ack (an ack still in the client's buffer when the
        # replica dies would send it again beyond what the places bound); and on the controlled path, an
        # Ordered webhook's next turn reads the consumer's state.
        await _confirmed_ack(msg)

    async def _settle(
        self, delivery: Delivery, state: WebhookState, result: AttemptResult, attempts: int, message: bytes
    ) -> float | None:
        """Record an attempt's outcome (final: metrics, then the log record); the retry's delay, if one is due."""
        policy = state.spec.retry
        if not result.succeeded and should_retry(attempts, policy, status=result.status_code, failure=result.failure):
            delay = next_backoff(attempts, policy, retry_after=result.retry_after)
            due = format_time_ms(now() + dt.timedelta(seconds=delay))
            await self._record(delivery, result, message, outcome="Retrying", attempts=attempts, next_attempt_time=due)
            return delay
        outcome = "Succeeded" if result.succeeded else "Failed"
        if self._live(state):
            self.metrics.delivery_final(delivery.namespace, state.name, delivery.event, result.succeeded)
        # The record first, then the ack: a crash in between repeats the attempt, never loses it.
        await self._record(delivery, result, message, outcome=outcome, attempts=attempts)
        return None

    async def _deliver_batch(self, msg: Msg, deliveries: list[Delivery], data: bytes, *, side_by_side: int) -> None:
        """Attempt the deliveries of a batch, ``side_by_side`` at a time (the places the message holds); the
        batch is acked once each is recorded final, or published on its own (a retry, a webhook not Ready or
        now controlled, a shutdown before sending). Any failure leaves it unacked: it comes back after the
        ack wait, and what was recorded is sent again, never lost."""
        delivered, sequence, _ = pull.delivery_info(msg)
        attempts = max(1, delivered)  # a repeat after a crash counts as an attempt
        slots = asyncio.Semaphore(max(1, side_by_side))
        tag = f"{DELIVERIES_STREAM}:{sequence}"
        tasks = [asyncio.ensure_future(self._batch_member(d, data, attempts, slots, tag)) for d in deliveries]
        try:
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        unsettled = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if unsettled:
            log.warning(
                "bus: %d of a batch's %d deliveries not settled (%s); the batch comes back",
                len(unsettled),
                len(outcomes),
                unsettled[0],
            )
            return
        # Confirmed before its places are freed: an ack still in the client's buffer when the replica dies
        # would send the whole batch again, beyond what the places bound.
        await _confirmed_ack(msg)

    async def _batch_member(
        self, delivery: Delivery, data: bytes, attempts: int, slots: asyncio.Semaphore, tag: str
    ) -> None:
        """One delivery of a batch: settled here, or published on its own; raises if neither. ``tag``: the
        batch's stream sequence, naming what it puts off."""
        async with slots:
            message = delivery.encode(data)
            state = self.index.get(delivery.namespace, delivery.webhook)
            if state is not None and state.uid != delivery.webhook_uid:
                state = None  # deleted and created again: not the webhook this event was for
            own_id = f"{delivery.id}/{delivery.redelivery or ''}"
            if state is not None and controlled(state):
                await self._stored([await self._publish(delivery, data, to_controlled=True, msg_id=own_id + "/moved")])
                return
            ending = waiting_reason(state)
            if ending is not None and ending != NOT_READY:
                error = f"not delivered: {ending}"
                await self._record(delivery, None, message, outcome="Failed", attempts=0, error=error)
                return
            result = None
            if ending is None:
                assert state is not None
                try:
                    if self._crowded(state) or self._would_hold_up(state):
                        raise PutOff
                    result = await self._attempt(delivery, state, data=data)
                except PutOff:
                    await self._stored([await self._put_off(state, delivery, data, attempts - 1, tag)])
                    return
            if result is None:
                # Not Ready (its own message waits for it), or stopping before sending: on its own, unattempted.
                await self._stored([await self._publish(delivery, data, to_controlled=False, msg_id=own_id + "/own")])
                return
            assert state is not None
            retry = await self._settle(delivery, state, result, attempts, message)
            if retry is not None:
                again = delivery.retry(attempts, format_time_ms(now() + dt.timedelta(seconds=retry)))
                await self._stored([await self._publish(again, data, to_controlled=False, msg_id=own_id + "/retry")])

    def _crowded(self, state: WebhookState) -> bool:
        """Whether a delivery to this webhook would wait long for its turn here (a slow or hanging endpoint):
        then it is put off, so that it holds none of this replica's places and others keep flowing."""
        waiting = self._crowd.get(state.uid, 0)
        concurrency = self._sending_share()
        if waiting >= CROWDED_FACTOR * concurrency:  # else no answer time needed
            typical = self._typical_answer()
            if typical is not None and crowded(waiting, concurrency, self._answer_time(state), typical):
                return True
        self._next_turn.pop(state.uid, None)  # not crowded: what is put off later starts a new schedule
        return False

    async def _take_turn(self, state: WebhookState, *, may_put_off: bool) -> None:
        """Take one of the webhook's slots, then a global one (round-robin over webhooks, each held to its
        share while they are short, as in CR mode). ``may_put_off``: raise ``PutOff`` instead when it has
        waited ``PUT_OFF_WAIT_S`` and the webhook is slow (its requests answered or hanging ``SLOW_FACTOR``
        times the replica's typical answer): what waits behind a slow webhook holds a place others need."""
        uid, limiter = state.uid, state.limiter
        assert limiter is not None
        # Whether it would wait, without Semaphore.locked(), which walks every waiter (hundreds when busy);
        # a waiter cancelled and not yet removed only sends it the long way round.
        if not may_put_off or (_free(limiter) > 0 and not limiter._waiters):
            await limiter.acquire()
        else:
            await self._wait_or_put_off(state, limiter.acquire)
        try:
            if not may_put_off or self._global.free > self._global.reserve:
                await self._global.acquire(uid)
            else:
                await self._wait_or_put_off(state, lambda: self._global.acquire(uid))
        except BaseException:
            limiter.release()
            raise

    async def _wait_or_put_off(self, state: WebhookState, acquire: Callable[[], Awaitable[Any]]) -> None:
        """``acquire()``, looking again every ``PUT_OFF_WAIT_S``: ``PutOff`` once the webhook is backlogged."""
        while True:
            try:
                async with asyncio.timeout(PUT_OFF_WAIT_S):
                    await acquire()
                return
            except TimeoutError:
                if self._backlogged(state):
                    raise PutOff from None

    def _would_hold_up(self, state: WebhookState) -> bool:
        """Whether attempting a batch's delivery to this webhook would hold the batch's places (the other
        webhooks' next deliveries) for a slow answer: then it is put off, and its own message holds one
        place alone. Slow: answering in ``HOLD_UP_S`` or more, and ``SLOW_FACTOR`` times the replica's
        typical answer; looked at closer only when its last answer took that long, or it has requests
        under way and none answered yet (hanging)."""
        answers = self._latency.get(state.uid)
        if answers:
            if answers[-1] < HOLD_UP_S:
                return False
        elif state.uid not in self._sending:
            return False
        answer, typical = self._answer_time(state), self._typical_answer()
        return answer >= HOLD_UP_S and typical is not None and slow(answer, typical)

    def _backlogged(self, state: WebhookState) -> bool:
        """Whether a delivery that has waited for its turn should be put off: its webhook is slow and more
        of its deliveries wait here than it takes within a second (twice what it may send at once, or
        more). With fewer, it keeps its place: its turn comes soon, and put off it would only come back."""
        share = self._sending_share()
        return self._crowd.get(state.uid, 0) >= CROWDED_FACTOR * share and self._slow(state)

    def _slow(self, state: WebhookState) -> bool:
        typical = self._typical_answer()
        return typical is not None and slow(self._answer_time(state), typical)

    def _typical_answer(self) -> float | None:
        """What the quickest webhook answering here lately takes (the least median of answer times), worked
        out at most once a second; forgetting webhooks with no answer for ``ANSWERS_FRESH_S``. Not a mean of
        attempts: when slow webhooks crowd out the others, most attempts are theirs."""
        clock = time.monotonic()
        at, typical = self._typical
        if clock - at < 1.0:
            return typical
        stale = [uid for uid, began in self._answered.items() if clock - began > ANSWERS_FRESH_S]
        for uid in stale:
            del self._answered[uid]
            self._latency.pop(uid, None)
        typical = quickest_answer(self._latency.values())
        self._typical = (clock, typical)
        return typical

    def _sending_share(self) -> int:
        """What one webhook can have under way here now (its concurrency, or its share of short slots)."""
        settings = self.settings
        return sending_share(settings.per_webhook_concurrency, settings.max_concurrency, len(self._crowd))

    def _answer_time(self, state: WebhookState) -> float:
        """How long the webhook takes to answer: the median of its last answers (one stuck request does not
        make it slow), or, with all its attempts under way and none answered since, the youngest one's age
        (a hanging endpoint has no answers yet)."""
        answers = self._latency.get(state.uid)
        latency = median(answers) if answers else 0.0
        sending = self._sending.get(state.uid)
        if sending and len(sending) >= self._sending_share():
            latency = max(latency, time.monotonic() - max(sending.values()))
        return latency

    async def _put_off(
        self, state: WebhookState, delivery: Delivery, data: bytes | None, made: int, tag: str
    ) -> asyncio.Future[Any]:
        """Publish the delivery on its own, due when the webhook should have room for it: deliveries put off
        are spaced by its answer time over its concurrency, after those waiting here, so they come back at
        the pace it takes them (at most ``MAX_PUT_OFF_S`` ahead). ``tag`` names the stored message it came
        from, so a repeat after a crash is dropped."""
        clock = time.monotonic()
        turn = put_off_turn(
            clock,
            self._answer_time(state),
            self._crowd.get(state.uid, 0),
            self._sending_share(),
            self._next_turn.get(state.uid, 0.0),
        )
        self._next_turn[state.uid] = turn
        delay = min(MAX_PUT_OFF_S, turn - clock)
        later = replace(delivery, after=made, due=format_time_ms(now() + dt.timedelta(seconds=delay)))
        msg_id = f"{delivery.id}/{delivery.redelivery or ''}/later@{tag}"
        return await self._publish(later, data, to_controlled=False, msg_id=msg_id)

    async def _forward(self, msg: Msg, delivery: Delivery, *, to_controlled: bool) -> None:
        """Publish the message, as it is, on the other path; then ack it here. The Nats-Msg-Id names this
        stored message, so a forward repeated after a crash is dropped, while a later move back is not."""
        assert self.publisher is not None
        meta = msg.metadata
        msg_id = f"{delivery.id}/{delivery.redelivery or ''}@{meta.stream}:{meta.sequence.stream}"
        ack = await self.publisher.publish(
            self._subject_for(delivery, to_controlled), msg.data, headers={MSG_ID_HEADER: msg_id}
        )
        await self._stored([ack])
        await msg.ack()

    async def _record(
        self,
        delivery: Delivery,
        result: AttemptResult | None,
        message: bytes,
        *,
        outcome: str,
        attempts: int,
        error: str = "",
        next_attempt_time: str | None = None,
    ) -> None:
        """Publish the request-log record, retrying while the bus is away (the message stays held).
        ``message``: the delivery's own message (as received, or spliced from its batch)."""
        assert self.publisher is not None
        payload = log_record(
            delivery,
            outcome=outcome,
            attempts=attempts,
            # When the request went out: the log's order is the order of the attempts, however late each
            # one's answer was taken up.
            time=now_ms(result.sent_at if result is not None and result.sent_at else None),
            status_code=result.status_code if result else None,
            duration_ms=round(result.duration_s * 1000) if result else 0,
            error=result.error if result else error,
            response_body=result.response_body if result else "",
            next_attempt_time=next_attempt_time,
            replica=self.replica,
            message=message,
        )
        record_id = log_record_id(delivery, attempts, outcome)
        tries = 0
        while True:
            try:
                ack = await self.publisher.publish(
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

    async def _attempt(
        self, delivery: Delivery, state: WebhookState, *, limited: bool = False, data: bytes | None = None
    ) -> AttemptResult | None:
        """One attempt; ``data``: the delivery's data as its batch message carries it (encoded once, for all)."""
        body = body_with_data(
            hook_id=state.hook_id,
            event=delivery.event,
            created_at=delivery.created_at,
            event_id=delivery.event_id,
            data_json=encode_data(delivery.data) if data is None else data,
        )
        assert state.limiter is not None
        # spec.rateLimit (controlled path): wait for a token holding no slot, keeping the webhook's turn,
        # and take it once the slots are held, at the moment of sending; as in CR mode (ratelimit.py).
        held = self._current_bucket(state) if limited else None
        turn: asyncio.Lock | None = None
        crowd = self._crowd
        if not limited:
            crowd[state.uid] = crowd.get(state.uid, 0) + 1
        if held is not None:
            await self._wait_for_token(state, held)
            turn = held[1]
        try:
            await self._take_turn(state, may_put_off=not limited)
            try:
                if held is not None and turn is not None:
                    held[0].take(time.monotonic())
                    turn.release()
                    turn = None
                if self._stopping.is_set():
                    return None
                self.metrics.gauges(state.namespace, state.name).in_flight.inc()
                sending = self._sending.setdefault(state.uid, {})
                token = id(body)
                sending[token] = began = time.monotonic()
                try:
                    result = await send(
                        self.client, state, body, delivery.id, timeout_s=state.spec.retry.timeout_seconds
                    )
                finally:
                    del sending[token]
                    if not sending:
                        self._sending.pop(state.uid, None)
                    if self._live(state):
                        self.metrics.gauges(state.namespace, state.name).in_flight.dec()
            finally:
                self._global.release(state.uid)
                state.limiter.release()
        finally:
            if turn is not None:
                turn.release()
            if not limited:
                left = crowd[state.uid] - 1
                if left:
                    crowd[state.uid] = left
                else:
                    del crowd[state.uid]
        answered = answer_time(result.duration_s, result.failure)
        if answered is not None:
            answers = self._latency.get(state.uid)
            if answers is None:
                answers = self._latency[state.uid] = collections.deque(maxlen=ANSWERS_KEPT)
            answers.append(answered)
            self._answered[state.uid] = began
        if self._live(state):
            self.metrics.attempt(
                state.namespace, state.name, status_class(result.status_code, result.failure), result.duration_s
            )
        return result

    # -- spec.rateLimit on the controlled path (the Lease holder) ----------------------------
    def _bucket(self, state: WebhookState) -> Held | None:
        return self._buckets.get((state.namespace, state.name, state.uid), state.spec.rate_limit)

    def _current_bucket(self, state: WebhookState) -> Held | None:
        current = self.index.get(state.namespace, state.name)
        return self._bucket(current if current is not None and current.uid == state.uid else state)

    async def _wait_for_token(self, state: WebhookState, held: Held) -> None:
        """Take the webhook's turn (oldest waiter first) and wait, holding no slot, for a token; the caller
        takes it and passes the turn on. A changed or removed limit applies to waiters within a second."""
        started = time.monotonic()
        bucket, turn = held
        await turn.acquire()
        try:
            await until_token(bucket, lambda: self._current_bucket(state), self._stopping)
        except BaseException:
            turn.release()
            raise
        waited = time.monotonic() - started
        if waited >= MIN_RATE_WAIT_S and self._live(state):
            self.metrics.rate_limited(state.namespace, state.name, waited)

    # -- the controlled path: spec.rateLimit and spec.ordering (the Lease holder only) -------------
    async def control(self) -> None:
        """One puller per webhook with a rateLimit or Ordered, on its own durable consumer; the same puller
        drains (moves to the shared path, or records as not delivered) the deliveries of a consumer or a
        stored subject whose webhook no longer asks for it, then removes the consumer. See control.py."""
        await self.ready.wait()
        pullers: dict[tuple[str, str], asyncio.Task[None]] = {}
        try:
            while not self._stopping.is_set():
                try:
                    wanted = await self._controlled_keys()
                except Exception as exc:
                    log.warning("bus: listing controlled deliveries failed (%s)", exc)
                    wanted = set()
                for key in wanted:
                    task = pullers.get(key)
                    if task is not None and task.done() and not task.cancelled() and task.exception():
                        log.warning("bus: serving %s/%s failed (%s); again", *key, task.exception())
                    if task is None or task.done():
                        pullers[key] = asyncio.create_task(self._serve(key), name=f"bus-controlled-{key[0]}-{key[1]}")
                await asyncio.sleep(CONTROL_INTERVAL_S)
        finally:
            for task in pullers.values():
                task.cancel()
            await asyncio.gather(*pullers.values(), return_exceptions=True)

    def _ours(self, namespace: str) -> bool:
        return not self.settings.namespaces or namespace in self.settings.namespaces

    async def _controlled_keys(self) -> set[tuple[str, str]]:
        """Webhooks to serve: those whose spec asks for it, and any with a consumer or stored deliveries."""
        assert self.js is not None
        keys = {state.key for state in self.index if controlled(state) and self._ours(state.namespace)}
        info = await self.js.stream_info(CONTROLLED_STREAM, subjects_filter=CONTROLLED_PREFIX + ">")
        for subject, count in (info.state.subjects or {}).items():
            key = subject_key(CONTROLLED_PREFIX, subject)
            if key is not None and count and self._ours(key[0]):
                keys.add(key)
        for consumer in await self.js.consumers_info(CONTROLLED_STREAM):
            subject = (consumer.config.filter_subject if consumer.config else None) or ""
            key = subject_key(CONTROLLED_PREFIX, subject) if consumer.name.startswith(CONSUMER_PREFIX) else None
            if key is not None and self._ours(key[0]):
                keys.add(key)
        return keys

    async def _view(self, durable: str) -> ConsumerView:
        assert self.js is not None
        info = await self.js.consumer_info(CONTROLLED_STREAM, durable)
        return ConsumerView(ack_pending=info.num_ack_pending or 0, unpulled=info.num_pending or 0)

    async def _fanned_out(self) -> int:
        assert self.js is not None
        info = await self.js.consumer_info(EVENTS_STREAM, FANOUT_CONSUMER)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        return fanned_out_through(floor or 0, info.num_ack_pending or 0, info.num_pending or 0)

    async def _serve(self, key: tuple[str, str]) -> None:
        namespace, name = key
        durable = controlled_consumer(namespace, name)
        assert self.js is not None
        await self.js.add_consumer(
            CONTROLLED_STREAM,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=controlled_subject(namespace, name),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.bus.ack_wait_s,
                max_deliver=-1,
                max_ack_pending=ORDER_WINDOW,
                max_waiting=16,
            ),
        )
        sub = await self._pull(durable, CONTROLLED_STREAM)
        # An Ordered webhook's pulled deliveries: (event seq, stream seq, msg, pulled at).
        held: list[tuple[int, int, Msg, float]] = []
        out: dict[int, tuple[Msg, asyncio.Task[Any]]] = {}  # being delivered, by id(msg)
        loop = asyncio.get_running_loop()
        # Messages of this webhook held at once, waiting for tokens included: its own places, so that a
        # throttled backlog never takes the shared ones other webhooks' deliveries need.
        limit = max(16, 2 * self.settings.per_webhook_concurrency)
        places = asyncio.Semaphore(limit)

        def start(msg: Msg) -> asyncio.Task[Any]:
            task = asyncio.ensure_future(self._deliver(msg, on_controlled=True, places=places))
            self._tasks.add(task)
            msg_key = id(msg)
            out[msg_key] = (msg, task)

            def done(finished: asyncio.Task[Any]) -> None:
                self._tasks.discard(finished)
                out.pop(msg_key, None)

            task.add_done_callback(done)
            return task

        async def release_held() -> None:
            while held:
                await places.acquire()
                msg = held.pop(0)[2]
                start(msg)

        try:
            while not self._stopping.is_set():
                state = self.index.get(namespace, name)
                if not controlled(state) or (state is not None and not state.spec.ordered):
                    if state is not None:
                        self.metrics.gauges(namespace, name).ordered_blocked.set(0)
                    await release_held()
                    if not controlled(state) and not out:
                        view = await self._view(durable)
                        if view.ack_pending == 0 and view.unpulled == 0:
                            # Drained: every delivery moved to the shared path or recorded.
                            with contextlib.suppress(nats.js.errors.NotFoundError):
                                await self.js.delete_consumer(CONTROLLED_STREAM, durable)
                            return
                    await places.acquire()  # at least one free place before asking for more
                    places.release()
                    for msg in await self._fetch(sub, max(1, _free(places)), 1.0):
                        await places.acquire()
                        start(msg)
                    continue
                assert state is not None
                view = await self._view(durable)
                # Waiting behind the head (held, out or not pulled yet), as CR mode's gauge.
                self.metrics.gauges(namespace, name).ordered_blocked.set(max(0, view.ack_pending + view.unpulled - 1))
                room = ORDER_WINDOW - len(held)
                if room > 0 and (not held or view.unpulled > 0 or view.ack_pending > len(held) + len(out)):
                    msgs = await self._fetch(sub, min(room, 256), 1.0 if not held else 0.2)
                    for msg in msgs:
                        delivery_seq = _delivery_seq(msg)
                        held.append((delivery_seq, msg.metadata.sequence.stream, msg, loop.time()))
                        self._held_since[id(msg)] = (msg, loop.time())
                    if msgs or not held:
                        continue
                    view = await self._view(durable)
                if out:
                    await asyncio.sleep(ORDER_POLL_S)  # a delivery started before Ordered applied
                    continue
                turn = ordered_turn([entry[0] for entry in held], view, await self._fanned_out())
                if turn is None:
                    await asyncio.sleep(ORDER_POLL_S)
                    continue
                at = min(range(len(held)), key=lambda i: (held[i][0], held[i][1]))
                _, _, msg, pulled_at = held.pop(at)
                self.metrics.ordered_wait(namespace, name, loop.time() - pulled_at)
                await places.acquire()
                # Shielded: a shutdown lets it finish (drain), a lost Lease cancels it below.
                await asyncio.shield(start(msg))
        finally:
            # Lease lost or shutting down: pulled messages go back at once, for the next Lease holder, with
            # any that arrive for a pull request after it returned.
            for _, _, msg, _ in held:
                self._held_since.pop(id(msg), None)
                with contextlib.suppress(Exception):
                    await msg.nak()
            if not self._stopping.is_set():
                for msg, task in list(out.values()):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                    with contextlib.suppress(Exception):
                        await msg.nak()
            await self._return_unread(sub, 1.0)

    # -- health (the Lease holder only) -----------------------------------------------------
    async def fold_health(self, webhooks: WebhookController) -> None:
        """Fold final outcomes of every replica into health; acked once flushed to status."""
        await self.ready.wait()
        sub = await self._pull(HEALTH_CONSUMER, LOG_STREAM)
        # Another leader may have read and acked in between: nothing of an earlier term is trusted.
        self._folded, self._counted, self._last_delivery, self._hold_acks_until = None, set(), 0, 0.0
        # Records handed to the last leader and neither acked nor given back (lost with it) sit between the
        # ack floor and our first record: counted as a gap, so that no ack of ours covers them unread.
        self._last_delivery = await self._health_ack_floor()
        interval = self.settings.health_flush_s
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Records of one flush interval, however many batches they come in: one status write per
                # webhook per interval, as in CR mode.
                flush_at = loop.time() + interval
                while (left := flush_at - loop.time()) > 0:
                    msgs = await self._fetch(sub, 1000, max(left, 0.05))
                    for msg in msgs:
                        _, sequence, delivery = pull.delivery_info(msg)
                        if self._last_delivery and delivery != self._last_delivery + 1:
                            self._hold_acks_until = loop.time() + 2 * HEALTH_ACK_WAIT_FACTOR * self.bus.ack_wait_s
                            log.warning("bus: a health record was lost on its way; acks wait for its redelivery")
                        self._last_delivery = delivery
                        if sequence not in self._counted:
                            self._counted.add(sequence)
                            fold_record(self.index, msg.subject, msg.data, on_attempt=webhooks.attempt_done)
                        if self._folded is None or sequence > self._folded_seq:
                            self._folded, self._folded_seq = msg, sequence
                if self._folded is None:
                    continue
                try:
                    await webhooks.flush_health()
                except Exception:
                    log.exception("bus: health flush failed")
                await self.ack_folded()
        finally:
            # Records handed to this leader and not folded go back now: the next leader's first ack (of all
            # up to its last record) would otherwise take them along, uncounted.
            await self._return_unread(sub, interval)

    async def _health_ack_floor(self) -> int:
        """The health consumer's ack floor (consumer sequence); 0 when it cannot be read (no gap check then)."""
        assert self.js is not None
        try:
            info = await self.js.consumer_info(LOG_STREAM, HEALTH_CONSUMER)
        except Exception as exc:
            log.warning("bus: reading the health consumer failed (%s)", exc)
            return 0
        return int(getattr(info.ack_floor, "consumer_seq", 0) or 0)

    async def _return_unread(self, sub: JetStreamContext.PullSubscription, wait_s: float) -> None:
        """Nak what a pull request brings after it returned, or a cancelled one until it expires (``wait_s``,
        its longest wait), then unsubscribe: those messages go to the next puller at once."""
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        with contextlib.suppress(Exception):
            while True:
                left = until - loop.time()
                try:
                    msgs = await pull.fetch(sub, 1000, max(0.05, left))
                except (nats.errors.TimeoutError, TimeoutError):
                    msgs = []
                for msg in msgs:
                    self._held_since.pop(id(msg), None)
                    with contextlib.suppress(Exception):
                        await msg.nak()
                if left <= 0:
                    break
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

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
            # Flushed (acks and naks are sent), not drained: nats-py's drain of a pull subscription waits
            # for its queue to be marked done, which fetch never does, so it took the whole drain timeout
            # (30 s) and the pod was killed before releasing the Lease.
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
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
        record = orjson.loads(payload)  # only the record's own fields are read: the event's data may lose digits
    except orjson.JSONDecodeError:
        try:
            record = json.loads(payload)  # NaN in an older record's data, say
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


_SECOND: list[Any] = [0, ""]  # (unix second, its format_time_ms up to the dot)


def now_ms(stamp: float | None = None) -> str:
    """``format_time_ms`` of ``stamp`` (a ``time.time()``; now by default), the seconds formatted once per
    second: every attempt records one."""
    if stamp is None:
        stamp = time.time()
    second = int(stamp)
    if _SECOND[0] != second:
        _SECOND[:] = [second, dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")]
    return f"{_SECOND[1]}{int((stamp - second) * 1000):03d}Z"


def _delivery_seq(msg: Msg) -> int:
    """The event sequence a delivery message carries (0 if none, or not a delivery: attempted first)."""
    with contextlib.suppress(BadMessage):
        return Delivery.decode(msg.data).seq
    return 0


def declare_problem(stream: str, replicas: int, error: nats.js.errors.APIError) -> str:
    """Why a stream was refused, and, when it cannot be placed, what the cluster needs (pure)."""
    text = f"stream {stream} refused: {error.description or 'no reason given'} (JetStream error {error.err_code})"
    if replicas > 1 and error.err_code in PLACEMENT_ERRORS:
        text += (
            f"; --event-bus-stream-replicas {replicas} needs a NATS cluster of at least {replicas} JetStream"
            " servers (or lower the flag)"
        )
    return text


async def _confirmed_ack(msg: Msg) -> None:
    """Ack and wait for the server to confirm it; past ``CONFIRM_ACK_TIMEOUT_S`` (a server this busy) the
    ack is left to arrive on its own."""
    try:
        await msg.ack_sync(timeout=CONFIRM_ACK_TIMEOUT_S)
    except Exception:
        with contextlib.suppress(Exception):
            await msg.ack()


def _free(semaphore: asyncio.Semaphore) -> int:
    return int(getattr(semaphore, "_value", 1))


def stream_of(sub: Any) -> str:
    return str(getattr(sub, "_stream", "") or "the bus")


Publish = Callable[[str, bytes, dict[str, str]], Awaitable[Any]]
__all__ = ["BusUnavailable", "BusWorker", "fold_record", "format_time"]
