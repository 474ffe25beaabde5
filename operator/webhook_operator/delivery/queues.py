"""Who gets the next global delivery slot, and which events wait outside memory (pure, no I/O).

``FairSlots`` hands the global slots (``--max-concurrency``) round-robin over the webhooks that want
one, so the attempts of one busy webhook cannot queue ahead of everyone else's; and while slots are
short, a webhook that already holds its fair share leaves the last few free for the others (slow or
hanging endpoints fill at most ``capacity - reserve`` slots, however many of them there are).

``ParkedEvents`` holds events that wait for a retry (or for room at their webhook) as a due time and
a uid: their body stays in the API server (``status.deliveries[].nextAttemptTime`` is the durable
schedule) and is read again when due, so memory does not grow with a dead endpoint's backlog.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def fair_share(capacity: int, active: int) -> int:
    """Slots each of ``active`` webhooks may hold while slots are short: an equal split with room for
    one more webhook (at least one)."""
    return max(1, capacity // (max(0, active) + 1))


def next_key(order: Iterable[K], held: Mapping[K, int], free: int, capacity: int, reserve: int) -> K | None:
    """The first waiting key in round-robin ``order`` that may take a free slot now, or None.

    Any key may while more than ``reserve`` slots are free; past that, only a key holding less
    than its fair share of ``capacity`` among the keys holding or wanting slots, so even a lone
    busy webhook leaves the last ``reserve`` slots to whoever comes next.
    """
    if free <= 0:
        return None
    waiting = list(order)
    if not waiting:
        return None
    active = len(set(waiting) | {key for key, count in held.items() if count > 0})
    share = fair_share(capacity, active)
    for key in waiting:
        if free > reserve or held.get(key, 0) < share:
            return key
    return None


class FairSlots(Generic[K]):
    """A semaphore of ``capacity`` slots granted round-robin over keys (see ``next_key``).

    Keys must not be None: ``next_key`` answers None for "no key may take a slot now".
    """

    def __init__(self, capacity: int, reserve: int = 0) -> None:
        self.capacity = capacity
        self.reserve = reserve
        self.free = capacity
        self._held: dict[K, int] = {}
        self._waiting: OrderedDict[K, deque[asyncio.Future[None]]] = OrderedDict()

    def held(self, key: K) -> int:
        return self._held.get(key, 0)

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    async def acquire(self, key: K) -> None:
        if not self._waiting and (
            self.free > self.reserve  # what next_key answers then, without counting the webhooks
            or next_key([key], self._held, self.free, self.capacity, self.reserve) is not None
        ):
            self._take(key)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(future)
        self._dispatch()  # waiters held back by the reserve may leave room for this key
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # granted as we were cancelled: hand it on
            else:
                queue = self._waiting.get(key)
                if queue is not None and future in queue:
                    queue.remove(future)
                    if not queue:
                        del self._waiting[key]
            raise

    def release(self, key: K) -> None:
        count = self._held.get(key, 0) - 1
        if count > 0:
            self._held[key] = count
        else:
            self._held.pop(key, None)
        self.free += 1
        self._dispatch()

    def _take(self, key: K) -> None:
        self._held[key] = self._held.get(key, 0) + 1
        self.free -= 1

    def _dispatch(self) -> None:
        while self.free > 0 and self._waiting:
            key = next_key(self._waiting, self._held, self.free, self.capacity, self.reserve)
            if key is None:
                return
            queue = self._waiting.pop(key)  # re-inserted last: the next grant starts with the following key
            future = queue.popleft()
            if queue:
                self._waiting[key] = queue
            if future.done():  # cancelled while waiting
                continue
            self._take(key)
            future.set_result(None)


@dataclass
class Parked:
    namespace: str
    name: str
    token: int
    webhooks: tuple[str, ...]  # the deliveries still open, counted in deliveries_pending meanwhile


class ParkedEvents:
    """Events out of memory until a due time, or until their webhook (``busy`` key) has room again.

    An event is in at most one place at a time; the heap and the per-webhook queues drop stale
    entries lazily (each park gets a new token).
    """

    def __init__(self) -> None:
        self._by_uid: dict[str, Parked] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._busy: dict[Hashable, deque[tuple[int, str]]] = {}
        self._tokens = 0

    def __contains__(self, uid: object) -> bool:
        return uid in self._by_uid

    def __len__(self) -> int:
        return len(self._by_uid)

    def park(
        self,
        uid: str,
        namespace: str,
        name: str,
        due: float,
        *,
        busy: Iterable[Hashable] = (),
        webhooks: tuple[str, ...] = (),
    ) -> None:
        self._tokens += 1
        self._by_uid[uid] = Parked(namespace, name, self._tokens, webhooks)
        heapq.heappush(self._heap, (due, self._tokens, uid))
        for key in busy:
            self._busy.setdefault(key, deque()).append((self._tokens, uid))
        if len(self._heap) > 2 * len(self._by_uid) + 1024:  # stale entries of events woken by their webhook
            self._heap = [entry for entry in self._heap if self._current(entry[1], entry[2])]
            heapq.heapify(self._heap)

    def _current(self, token: int, uid: str) -> bool:
        parked = self._by_uid.get(uid)
        return parked is not None and parked.token == token

    def discard(self, uid: str) -> Parked | None:
        return self._by_uid.pop(uid, None)

    def next_due(self) -> float | None:
        while self._heap and not self._current(self._heap[0][1], self._heap[0][2]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> tuple[str, Parked] | None:
        due = self.next_due()
        if due is None or due > now:
            return None
        _, _, uid = heapq.heappop(self._heap)
        return uid, self._by_uid.pop(uid)

    def pop_busy(self, key: Hashable) -> tuple[str, Parked] | None:
        """The longest-waiting event parked for room at ``key``, if any."""
        queue = self._busy.get(key)
        while queue:
            token, uid = queue.popleft()
            if self._current(token, uid):
                if not queue:
                    del self._busy[key]
                return uid, self._by_uid.pop(uid)
        self._busy.pop(key, None)
        return None

    def release(self, key: Hashable, due: float) -> int:
        """Make every event parked for room at ``key`` due at ``due`` (or at its own due time, if
        earlier); how many there were."""
        queue = self._busy.pop(key, None) or deque()
        count = 0
        for token, uid in queue:
            if self._current(token, uid):
                heapq.heappush(self._heap, (due, token, uid))
                count += 1
        return count
