"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

The decisions are pure functions of the Lease, our identity and the clock; ``LeaderElector``
does the API I/O. A candidate judges a Lease expired by its *own* clock: a holder's record that
has not changed for ``lease_duration`` since we first saw it (renewTime written by another
machine is never compared with our clock). A leader that cannot renew for ``renew_deadline``
(shorter than the lease) stops leading before anyone else may take over. Every write carries
the resourceVersion read, so two candidates cannot both win.

One departure from client-go: time in which a candidate could not read the Lease does not count
towards its expiry, instead of the unchanged record being found expired at once. After an API-server
outage the holder, which could not renew either, gets a whole lease duration to do so: it
comes back before anyone else may, and its term *resumes* (``on_started(resumed=True)``),
so what it did during the outage is recorded instead of repeated by a new leader.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from webhook_operator.identity import instance_name
from webhook_operator.kube import ApiError, KubeClient, resource_path

log = logging.getLogger(__name__)

LEASE_DURATION_S = 15.0
RENEW_DEADLINE_S = 10.0
RETRY_PERIOD_S = 2.0
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# -- identity and defaults ------------------------------------------------------------------
def default_namespace(environ: dict[str, str] | None = None, namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The pod's namespace (POD_NAMESPACE, else the service account's namespace file), else ``default``."""
    env = os.environ if environ is None else environ
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    try:
        text = namespace_file.read_text().strip()
    except OSError:
        text = ""
    return text or "default"


def holder_identity(environ: dict[str, str] | None = None) -> str:
    """Pod name (POD_NAME, else the hostname) plus a random suffix: a restarted container is a new candidate."""
    return f"{instance_name(environ)}_{secrets.token_hex(4)}"


# -- MicroTime ------------------------------------------------------------------------------
def format_micro_time(value: dt.datetime) -> str:
    """RFC 3339 with microseconds, the MicroTime format of Lease times."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


# -- the record and the decisions -----------------------------------------------------------
@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease's spec that leader election reads and writes."""

    holder: str = ""
    lease_duration_s: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: dict[str, Any] | None) -> LeaseRecord:
        spec = (lease or {}).get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder or None,
            "leaseDurationSeconds": self.lease_duration_s,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


def lease_expired(record: LeaseRecord, observed_at: float, now: float) -> bool:
    """Whether another candidate may take the Lease: nobody holds it, or its record has not changed
    for its own lease duration since we first saw it (``observed_at``/``now`` on our monotonic clock)."""
    if not record.holder:
        return True
    return now >= observed_at + record.lease_duration_s


def observe(
    record: LeaseRecord | None,
    observed: LeaseRecord | None,
    observed_at: float,
    now: float,
    *,
    unseen_s: float = 0.0,
) -> tuple[LeaseRecord | None, float]:
    """The record we go by and since when it counts as unchanged. A change restarts the clock. Time in
    which we could not read the Lease (``unseen_s``, since the last successful read) does not count:
    the holder may not have been able to renew then either, so its silence proved nothing."""
    if record != observed:
        return record, now
    return observed, min(now, observed_at + max(0.0, unseen_s))


def resumes_term(record: LeaseRecord | None, identity: str) -> bool:
    """Taking this Lease continues our last term: the record still names us, so nobody led since."""
    return record is not None and record.holder == identity


def may_acquire(record: LeaseRecord | None, identity: str, observed_at: float, now: float) -> bool:
    """Should ``identity`` write itself into this Lease (None: the Lease does not exist yet)?"""
    if record is None or record.holder == identity:
        return True
    return lease_expired(record, observed_at, now)


def next_record(
    record: LeaseRecord | None, identity: str, lease_duration_s: float, wall_now: dt.datetime
) -> LeaseRecord:
    """The record to write to acquire or renew: a renewal keeps acquireTime; a new holder counts a transition."""
    stamp = format_micro_time(wall_now)
    duration = max(1, round(lease_duration_s))
    if record is not None and record.holder == identity:
        return replace(record, lease_duration_s=duration, renew_time=stamp)
    transitions = 0 if record is None else record.transitions + (1 if record.holder else 0)
    return LeaseRecord(identity, duration, stamp, stamp, transitions)


def released_record(record: LeaseRecord, wall_now: dt.datetime) -> LeaseRecord:
    """What a leader writes when it steps down (client-go's ReleaseOnCancel): no holder, 1 s."""
    stamp = format_micro_time(wall_now)
    return LeaseRecord("", 1, stamp, stamp, record.transitions)


def must_step_down(last_renewed: float, now: float, renew_deadline_s: float) -> bool:
    """A leader that has not renewed for the renew deadline stops leading (before its lease can expire)."""
    return now - last_renewed >= renew_deadline_s


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    name: str
    identity: str
    lease_duration_s: float = LEASE_DURATION_S
    renew_deadline_s: float = RENEW_DEADLINE_S
    retry_period_s: float = RETRY_PERIOD_S


Callback = Callable[[], Awaitable[None]]
StartedCallback = Callable[[bool], Awaitable[None]]


class LeaderElector:
    """Campaigns for the Lease and keeps it; calls ``on_started``/``on_stopped`` at each change.

    ``on_started(resumed)``: ``resumed`` when this process led last and nobody has held the Lease
    since it stopped (its work of that term is still its own to finish and record). After stopping,
    ``on_superseded`` is called once another holder (or a changed Lease) shows that term is over.
    """

    def __init__(
        self,
        kube: KubeClient,
        config: ElectionConfig,
        *,
        on_started: StartedCallback,
        on_stopped: Callback,
        on_superseded: Callback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.config = config
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.on_superseded = on_superseded
        self.clock = clock
        self.leading = False
        self.path = resource_path("leases", config.namespace, config.name, group="coordination.k8s.io", version="v1")
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._lease: dict[str, Any] | None = None  # the last Lease object read or written
        self._last_renewed = 0.0
        self._blind = False  # the last read failed: the time unseen since the last good one does not count
        self._last_read = 0.0
        self._stopped_term = False  # we stopped leading and nobody else is known to have led since
        self._resumes = False  # the last successful acquisition continued our own record
        self._superseded = False

    async def run(self) -> None:
        """Campaign and lead until cancelled; steps down (without releasing) when renewals fail."""
        while True:
            if await self._try_acquire_or_renew():
                if not self.leading:
                    self.leading = True
                    resumed = self._stopped_term and self._resumes
                    self._stopped_term = False
                    log.info(
                        "%s the leader (Lease %s/%s, identity %s)",
                        "leading again as" if resumed else "became",
                        self.config.namespace,
                        self.config.name,
                        self.config.identity,
                    )
                    await self.on_started(resumed)
            elif self.leading and must_step_down(self._last_renewed, self.clock(), self.config.renew_deadline_s):
                log.error(
                    "could not renew the Lease within %.0fs, or another replica holds it: no longer the leader; "
                    "stopping deliveries",
                    self.config.renew_deadline_s,
                )
                self.leading = False
                self._stopped_term = True
                await self.on_stopped()
            if self._superseded:
                self._superseded = False
                if self._stopped_term:
                    self._stopped_term = False
                    log.info("another replica has led since this one stopped: its unfinished work is dropped")
                    if self.on_superseded is not None:
                        await self.on_superseded()
            await asyncio.sleep(self.config.retry_period_s)

    async def _try_acquire_or_renew(self) -> bool:
        # An attempt never outlives the time left before we would have to step down.
        budget = self.config.renew_deadline_s
        if self.leading:
            budget = max(0.1, self.config.renew_deadline_s - (self.clock() - self._last_renewed))
        try:
            return await asyncio.wait_for(self._attempt(), timeout=budget)
        except (ApiError, OSError, TimeoutError) as exc:
            log.warning("leader election: %s", exc or type(exc).__name__)
            self._blind = True
            return False
        except Exception:  # a bug must not end the loop: a leader would then go on without renewing
            log.exception("leader election failed unexpectedly")
            return False

    async def _attempt(self) -> bool:
        lease = await self.kube.get(self.path)
        now = self.clock()
        record = None if lease is None else LeaseRecord.from_lease(lease)
        unseen_s = now - self._last_read if self._blind else 0.0
        self._observed, self._observed_at = observe(record, self._observed, self._observed_at, now, unseen_s=unseen_s)
        self._blind, self._last_read = False, now
        resumes = resumes_term(record, self.config.identity)
        if not resumes and not self.leading:
            self._superseded = True
        if not may_acquire(record, self.config.identity, self._observed_at, now):
            if self.leading:  # someone else holds it (our lease expired in their eyes): stop at once
                self._last_renewed = float("-inf")
            return False
        new = next_record(record, self.config.identity, self.config.lease_duration_s, dt.datetime.now(dt.UTC))
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                "spec": new.to_spec(),
            }
            try:
                written = await self.kube.create(self.path.rsplit("/", 1)[0], body)
            except ApiError as exc:
                if exc.status == 409:  # another candidate created it first
                    return False
                raise
        else:
            replaced = await self._put(lease, new)
            if replaced is None:
                return False
            written = replaced
        self._remember(written, self.clock())
        self._last_renewed = self.clock()
        self._resumes = resumes
        return True

    async def _put(self, lease: dict[str, Any], record: LeaseRecord) -> dict[str, Any] | None:
        # resourceVersion from the read: a concurrent writer makes this a 409, never a second winner.
        body = {**lease, "spec": {**(lease.get("spec") or {}), **record.to_spec()}}
        try:
            return await self.kube.request("PUT", self.path, body=body)
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise

    def _remember(self, lease: dict[str, Any], at: float) -> None:
        self._lease = lease
        self._observed, self._observed_at = LeaseRecord.from_lease(lease), at

    async def release(self) -> bool:
        """Step down and hand the Lease over at once (holder emptied, 1 s duration)."""
        if not self.leading or self._lease is None:
            return False
        self.leading = False
        record = LeaseRecord.from_lease(self._lease)
        if record.holder != self.config.identity:
            return False
        try:
            written = await asyncio.wait_for(
                self._put(self._lease, released_record(record, dt.datetime.now(dt.UTC))), RENEW_DEADLINE_S
            )
        except (ApiError, OSError, TimeoutError) as exc:
            log.warning("releasing the Lease failed (a standby takes over when it expires): %s", exc)
            return False
        if written is None:
            return False
        log.info("released the Lease %s/%s", self.config.namespace, self.config.name)
        return True
