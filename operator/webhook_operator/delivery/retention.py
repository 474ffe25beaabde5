"""Which completed WebhookEvents to delete, and when: TTL by outcome and a per-namespace cap (pure).

etcd is not a request log: Kubernetes' scale targets for custom resources (KEP-95) are about
10,000 objects per CRD per cluster and 1,500 per namespace, so completed events are kept by
outcome (delivered ones briefly, failed ones long enough to redeliver) and at most
``max_per_namespace`` of them per namespace, the oldest completed deleted first. Health figures
never come from these objects (they live in Webhook ``status.health``), so deleting them
changes no figure.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

FAILED_PHASES = frozenset({"Failed", "PartiallyFailed"})
# Lazily deleted heap entries are compacted away once they outnumber live ones by this much.
COMPACT_SLACK = 256


@dataclass(frozen=True)
class Due:
    uid: str
    namespace: str
    name: str


@dataclass
class Retention:
    ttl_s: float  # Delivered and NoSubscribers; <= 0 keeps them
    failed_ttl_s: float  # Failed and PartiallyFailed; <= 0 keeps them
    max_per_namespace: int  # completed events kept per namespace; <= 0 no cap
    # One deletion deadline per uid; heap entries whose deadline is no longer the uid's are stale.
    _deadline: dict[str, float] = field(default_factory=dict)
    _heap: list[tuple[float, str, str, str]] = field(default_factory=list)  # (deadline, uid, namespace, name)
    # Completed events not yet due, per namespace, for the cap: uid -> (completed at, name)...
    _completed: dict[str, dict[str, tuple[float, str]]] = field(default_factory=dict)
    # ...and the same, oldest first (lazily cleaned like _heap).
    _oldest: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)
    _namespace_of: dict[str, str] = field(default_factory=dict)

    def ttl_for(self, phase: str) -> float:
        return self.failed_ttl_s if phase in FAILED_PHASES else self.ttl_s

    def completed(self, uid: str, namespace: str, name: str, phase: str, completed_at: float) -> None:
        """Record a final event (seen again at every relist: then this changes nothing)."""
        known = self._completed.setdefault(namespace, {})
        if known.get(uid, (None, ""))[0] != completed_at:
            known[uid] = (completed_at, name)
            self._namespace_of[uid] = namespace
            heapq.heappush(self._oldest.setdefault(namespace, []), (completed_at, uid, name))
        ttl = self.ttl_for(phase)
        if ttl > 0:
            self.schedule(completed_at + ttl, uid, namespace, name)
        else:
            self._deadline.pop(uid, None)
        self._enforce_cap(namespace)

    def schedule(self, deadline: float, uid: str, namespace: str, name: str) -> bool:
        """Delete ``uid`` at ``deadline`` instead of any earlier plan; False if that is the plan already."""
        if self._deadline.get(uid) == deadline:
            return False
        self._deadline[uid] = deadline
        heapq.heappush(self._heap, (deadline, uid, namespace, name))
        if len(self._heap) > 2 * len(self._deadline) + COMPACT_SLACK:
            self._heap = [e for e in self._heap if self._deadline.get(e[1]) == e[0]]
            heapq.heapify(self._heap)
        return True

    def forget(self, uid: str) -> None:
        """The event is gone, or is being delivered again: neither delete it nor count it."""
        self._deadline.pop(uid, None)
        self._uncount(uid)

    def _uncount(self, uid: str) -> None:
        namespace = self._namespace_of.pop(uid, None)
        if namespace is None:
            return
        known = self._completed[namespace]
        known.pop(uid, None)
        oldest = self._oldest[namespace]
        if len(oldest) > 2 * len(known) + COMPACT_SLACK:
            self._oldest[namespace] = [e for e in oldest if known.get(e[1], (None, ""))[0] == e[0]]
            heapq.heapify(self._oldest[namespace])

    def _enforce_cap(self, namespace: str) -> None:
        if self.max_per_namespace <= 0:
            return
        known, oldest = self._completed[namespace], self._oldest[namespace]
        while len(known) > self.max_per_namespace and oldest:
            completed_at, uid, name = heapq.heappop(oldest)
            if known.get(uid, (None, ""))[0] != completed_at:
                continue  # stale entry
            del known[uid]
            del self._namespace_of[uid]
            self.schedule(float("-inf"), uid, namespace, name)  # due at once

    def next_deadline(self) -> float | None:
        while self._heap and self._deadline.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Due | None:
        """The next event whose deletion is due, no longer planned or counted; None if none is due."""
        deadline = self.next_deadline()
        if deadline is None or deadline > now:
            return None
        _, uid, namespace, name = heapq.heappop(self._heap)
        del self._deadline[uid]
        self._uncount(uid)
        return Due(uid, namespace, name)

    def deadline_of(self, uid: str) -> float | None:
        return self._deadline.get(uid)

    def counted(self, namespace: str) -> int:
        """Completed events of ``namespace`` kept and counted against the cap."""
        return len(self._completed.get(namespace, {}))

    @property
    def heap_size(self) -> int:
        return len(self._heap)
