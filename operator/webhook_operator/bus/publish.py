"""JetStream publications whose stream acks resolve futures: nats-py's ``publish_async``, leaner.

Every delivery publishes twice with an awaited ack (fan-out's delivery message, the request-log record).
nats-py's ``publish_async`` spends per publication a ``wait_for`` on a semaphore, random bytes for a
token, a done-callback and a parsed ``PubAck`` nobody reads here. This keeps one reply subscription per
connection, numbers the publications, and resolves each future with None, or with the stream's error
(``APIError``, e.g. a full stream) or ``NoStreamResponseError`` (no stream for the subject), or with
``TimeoutError`` when no ack came within ``timeout_s`` (one timer for all, not one per wait).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

NO_RESPONDERS = "503"
SWEEP_EVERY = 4096  # publications between two sweeps of abandoned futures (acks lost with a NATS node)


class Publisher:
    def __init__(self, nc: NATS, timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.prefix = ""
        self.futures: dict[str, asyncio.Future[None]] = {}
        self.sequence = 0
        self._deadlines: deque[tuple[float, asyncio.Future[None]]] = deque()  # in publication order
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Subscribe to this publisher's replies (once, before the first publication)."""
        self.prefix = self.nc.new_inbox() + "."
        await self.nc.subscribe(self.prefix + "*", cb=self._on_reply)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[None]:
        """Send one publication; the future completes with the stream's ack (cancel it to stop waiting)."""
        self.sequence += 1
        token = str(self.sequence)
        if not self.sequence % SWEEP_EVERY:
            self.futures = {key: future for key, future in self.futures.items() if not future.done()}
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.futures[token] = future
        try:
            await self.nc.publish(subject, payload, reply=self.prefix + token, headers=headers)
        except BaseException:
            del self.futures[token]
            raise
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].done():  # acks come back in about publication order
            deadlines.popleft()
        deadlines.append((loop.time() + self.timeout_s, future))
        if self._timer is None:
            self._timer = loop.call_later(self.timeout_s, self._expire)
        return future

    def _expire(self) -> None:
        """Fail the publications whose ack is overdue; come back when the next one is due."""
        loop = asyncio.get_running_loop()
        clock, deadlines = loop.time(), self._deadlines
        while deadlines and deadlines[0][0] <= clock:
            _, future = deadlines.popleft()
            if not future.done():
                future.set_exception(TimeoutError(f"no stream ack within {self.timeout_s:g}s"))
        self._timer = loop.call_at(deadlines[0][0], self._expire) if deadlines else None

    async def _on_reply(self, msg: Msg) -> None:
        future = self.futures.pop(msg.subject[len(self.prefix) :], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        if b'"error"' not in msg.data:
            future.set_result(None)
            return
        try:
            error = json.loads(msg.data).get("error")
            if isinstance(error, dict):
                nats.js.errors.APIError.from_error(error)  # raises the error's own class
        except Exception as exc:  # the stream's error, or a reply that is no JSON object
            future.set_exception(exc)
            return
        future.set_result(None)  # "error" only inside a value: a plain ack
