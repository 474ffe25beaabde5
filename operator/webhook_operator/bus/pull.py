"""Pulling a batch from a JetStream pull consumer: nats-py's ``fetch`` protocol, read off the queue directly.

nats-py's ``PullSubscription.fetch`` waits for every message of a batch with ``next_msg``, which creates a
task, a ``wait_for`` timer and a uuid per message: at thousands of deliveries a second, a tenth of the
operator's CPU went to that. This sends the same pull requests in the same order (leftovers of an earlier
request first; a ``no_wait`` request; if that brought nothing, one waiting until the timeout) and takes
what has arrived straight from the subscription's queue, waiting with one ``asyncio.timeout`` only when it
is empty. It relies on three attributes of nats-py's pull subscription (``_sub``, ``_nms``, ``_deliver``)
and on its subscription's ``_pending_queue`` and ``_pending_size``, stable since nats-py 2.2.

Each request has its own reply subject (``bind`` subscribes to ``<inbox>.*``), and only the status of the
request under way ends it. With one reply subject for all, as nats-py has it, a request's 408 that arrives
just after its fetch gave up reads as the answer to the next fetch's request; that fetch then sends a
second, waiting request while the first is still open, and the orphan keeps handing messages to the
subscription after the fetch returned: up to a batch nobody asked for, held without in-progress acks until
the next fetch, past the ack wait when the replica is busy, and so delivered by two replicas.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.client import DEFAULT_JS_SUB_PENDING_BYTES_LIMIT, DEFAULT_JS_SUB_PENDING_MSGS_LIMIT

STATUS = "Status"
NO_MESSAGES = "404"
REQUEST_TIMEOUT = "408"
CONFLICT = "409"
HEARTBEAT = "100"
STALE = "stale"  # a status answering an earlier request: skipped like a heartbeat
SKIPPED = frozenset({HEARTBEAT, STALE})
ENDS_REQUEST = frozenset({NO_MESSAGES, REQUEST_TIMEOUT})
TEMPORARY = frozenset({NO_MESSAGES, REQUEST_TIMEOUT, CONFLICT})
_requests = itertools.count(1)  # reply tokens, unique in this process


async def bind(js: JetStreamContext, durable: str, stream: str) -> JetStreamContext.PullSubscription:
    """A pull subscription to the durable consumer, as ``js.pull_subscribe_bind`` makes it, but subscribed
    to ``<inbox>.*``: each of ``fetch``'s requests gets a reply subject of its own under it."""
    nc = js._nc
    inbox = bytes(nc._inbox_prefix) + b"." + bytes(nc._nuid.next())
    sub = await nc.subscribe(
        inbox.decode() + ".*",
        pending_msgs_limit=DEFAULT_JS_SUB_PENDING_MSGS_LIMIT,
        pending_bytes_limit=DEFAULT_JS_SUB_PENDING_BYTES_LIMIT,
    )
    return JetStreamContext.PullSubscription(js=js, sub=sub, stream=stream, consumer=durable, deliver=inbox)


class _Queue:
    """The subscription's pending messages, taken one at a time with nats-py's bookkeeping."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub._sub
        self.queue: asyncio.Queue[Msg] = self.sub._pending_queue
        self.conn = sub._nc
        self.inbox: str = sub._deliver
        self.current = ""  # the reply subject of the request under way

    async def request(self, subject: str, request: dict[str, Any]) -> None:
        self.current = f"{self.inbox}.{next(_requests)}"
        await self.conn.publish(subject, json.dumps(request).encode(), self.current)

    def status(self, msg: Msg) -> str | None:
        """The status of a message answering the request under way; None for a message to hand out (whichever
        request brought it); ``STALE`` for a status of an earlier request (it ended, or its fetch gave up)."""
        status = status_of(msg)
        if status is not None and msg.subject != self.current:
            return STALE
        return status

    def take(self) -> Msg:
        msg = self.queue.get_nowait()
        self.sub._pending_size -= len(msg.data)
        return msg

    def put_back(self, msgs: list[Msg]) -> None:
        """Messages taken but not handed out (the fetch was cancelled): left for the next fetch, which
        returns them first, so that a caller stepping down can still give them back (nak)."""
        for msg in msgs:
            self.queue.put_nowait(msg)
            self.sub._pending_size += len(msg.data)

    async def next(self, until: float) -> Msg:
        """The next message, waiting until the loop time ``until``; TimeoutError after it."""
        if not self.queue.empty():
            return self.take()
        if self.conn.is_closed:
            raise nats.errors.ConnectionClosedError
        loop = asyncio.get_running_loop()
        if until <= loop.time():
            raise TimeoutError
        async with asyncio.timeout_at(until):
            msg = await self.queue.get()
        self.sub._pending_size -= len(msg.data)
        return msg


def delivery_info(msg: Msg) -> tuple[int, int, int]:
    """(times delivered, stream sequence, consumer sequence) of a JetStream message, from its reply subject:
    ``msg.metadata`` builds two frozen dataclasses and a datetime for them, per message."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":  # $JS.ACK.<stream>.<consumer>.<n>...
        return int(tokens[4]), int(tokens[5]), int(tokens[6])
    meta = msg.metadata  # with a domain and account hash; raises for what is no JetStream message
    return meta.num_delivered, meta.sequence.stream, meta.sequence.consumer


def status_of(msg: Msg) -> str | None:
    headers = msg.headers
    return headers.get(STATUS) if headers else None


def _processable(status: str | None, msg: Msg) -> bool:
    """A message to hand out (no status), a status that ends or interrupts a request, or an error."""
    if status is None:
        return True
    if status in TEMPORARY:
        return False
    raise nats.js.errors.APIError.from_msg(msg)


async def fetch(sub: Any, batch: int, wait_s: float) -> list[Msg]:
    """Up to ``batch`` messages of the pull subscription ``sub`` within ``wait_s`` seconds, as
    ``sub.fetch(batch, timeout=wait_s)``; TimeoutError when none came."""
    if batch < 1 or wait_s <= 0:
        raise ValueError("fetch: a batch of at least one and a positive timeout")
    if not sub._sub.subject.endswith(".*"):
        raise ValueError("fetch: a subscription made by pull.bind (a reply subject per request)")
    queue = _Queue(sub)
    msgs: list[Msg] = []
    try:
        return await _fetch(queue, sub, batch, wait_s, msgs)
    except asyncio.CancelledError:
        # Taken off the queue and not returned: lost to the caller, they would stay with this subscription
        # unacknowledged until the ack wait, while a later AckAll of another puller could cover them.
        queue.put_back(msgs)
        raise


async def _fetch(queue: _Queue, sub: Any, batch: int, wait_s: float, msgs: list[Msg]) -> list[Msg]:
    loop = asyncio.get_running_loop()
    until = loop.time() + wait_s
    # Leftovers: messages of an earlier request that arrived after it returned.
    while not queue.queue.empty():
        msg = queue.take()
        if status_of(msg) is None:
            msgs.append(msg)
    needed = batch - len(msgs)
    if needed <= 0:
        return msgs
    # What is there now. (With ``expires`` the server lets a no_wait request wait for a first message.)
    request: dict[str, Any] = {"batch": needed, "no_wait": True}
    if not msgs:
        request["expires"] = int(wait_s * 1_000_000_000) - 100_000
    await queue.request(sub._nms, request)
    while True:
        try:
            msg = await queue.next(until)
        except TimeoutError:
            if msgs:
                return msgs
            raise
        status = queue.status(msg)
        if status not in SKIPPED:
            break
    if _processable(status, msg):
        msgs.append(msg)
        needed -= 1
        needed = await _rest_of_batch(queue, until, needed, msgs)
    if msgs:
        return msgs
    # Nothing yet: one request that waits for messages until the timeout.
    left = until - loop.time()
    expires = int(left * 1_000_000_000) - 100_000
    if expires <= 0:
        raise TimeoutError
    await queue.request(sub._nms, {"batch": needed, "expires": expires})
    while not msgs:
        msg = await queue.next(until)  # TimeoutError: none came
        status = queue.status(msg)
        if status in SKIPPED:
            continue
        if status is None:
            msgs.append(msg)
            needed -= 1
            break
        if status in TEMPORARY:
            break  # this request ended: wait for what else arrives until the timeout, as nats-py does
        raise nats.js.errors.APIError.from_msg(msg)
    await _rest_of_batch(queue, until, needed, msgs)
    if not msgs:
        raise TimeoutError
    return msgs


async def _rest_of_batch(queue: _Queue, until: float, needed: int, msgs: list[Msg]) -> int:
    """Append the messages a request still brings, until ``needed`` are in, it ends or time is up;
    how many are still missing."""
    while needed > 0:
        try:
            msg = await queue.next(until)
        except TimeoutError:
            break
        status = queue.status(msg)
        if status in ENDS_REQUEST:
            break
        if status not in SKIPPED and _processable(status, msg):
            msgs.append(msg)
            needed -= 1
    return needed
