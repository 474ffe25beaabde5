"""Bus mode's ``spec.rateLimit`` and ``spec.ordering: Ordered`` (pure): which webhooks take the controlled
path, and which held delivery of an Ordered webhook may be attempted now.

Deliveries of a controlled webhook are published under ``webhook-operator.controlled.<ns>.<webhook>``
and pulled by the Lease holder alone through the webhook's own durable consumer, so one token bucket
and one order see every attempt to that webhook whichever replica fanned the event out.

Order. Replicas fan out events side by side, so the controlled stream holds an Ordered webhook's
deliveries almost, not exactly, in event order. Each delivery carries its event's sequence in the
events stream; the Lease holder pulls what the consumer has (up to a window), and attempts the lowest
sequence it holds only when nothing earlier can still come: every earlier event is fanned out (the
fan-out consumer's ack floor reached it), nothing of the consumer is out elsewhere (a head waiting for
its retry, or messages a dead leader held until the ack wait returns them) and nothing is left to pull.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from webhook_operator.delivery.queues import fair_share
from webhook_operator.index import WebhookState
from webhook_operator.retry import FAILURE_TIMEOUT

CROWDED_FACTOR = 2  # deliveries of one webhook waiting or under way before any is put off, in its concurrency
PUT_OFF_WAIT_S = 1.0  # a delivery that would wait this long for its webhook's turn is put off
MAX_PUT_OFF_S = 300.0
HOLD_UP_S = 0.1  # a batch's delivery to a slow webhook answering this slowly is put off, not attempted
SLOW_FACTOR = 4.0  # a webhook answering this many times slower than the replica's typical attempt is slow
MIN_ANSWER_S = 0.01
ORDER_WINDOW = 1000  # deliveries of one Ordered webhook held in memory to sort (max_ack_pending)
EVERYTHING = 2**63  # the fan-out consumer is idle: every stored event is fanned out


def controlled(state: WebhookState | None) -> bool:
    """Whether the webhook's deliveries take the controlled path (the Lease holder's own consumer)."""
    return state is not None and (state.spec.ordered or state.spec.rate_limit is not None)


@dataclass(frozen=True)
class ConsumerView:
    """What JetStream says of a webhook's controlled consumer."""

    ack_pending: int  # delivered and not acked: held here, held by a dead leader, or a retry's nak delay
    unpulled: int  # stored and not delivered yet


def fanned_out_through(ack_floor_seq: int, ack_pending: int, unpulled: int) -> int:
    """The events stream sequence up to which every event is fanned out (its deliveries are stored)."""
    if ack_pending == 0 and unpulled == 0:
        return EVERYTHING
    return ack_floor_seq


def ordered_turn(held: Iterable[int], view: ConsumerView, fanned_out: int, window: int = ORDER_WINDOW) -> int | None:
    """The event sequence of the held delivery that may be attempted now, if any (None: wait)."""
    seqs = list(held)
    if not seqs:
        return None
    if view.ack_pending > len(seqs):
        return None  # a retrying head (nak with a delay) or a dead leader's messages are still out
    if view.unpulled > 0 and len(seqs) < window:
        return None  # pull the rest first: an earlier event may be among them
    head = min(seqs)
    if head - 1 > fanned_out:
        return None  # an earlier event is not fanned out yet
    return head


# -- a slow webhook on the shared path: put off what would wait long ------------------------------------
def answer_time(duration_s: float, failure: str | None) -> float | None:
    """What an attempt says of how long its webhook takes to answer: an HTTP answer's time, or a
    timeout's; nothing for a refused connection or a blocked address (failing fast says nothing of how
    slow the endpoint is, and would make every other webhook look slow beside it)."""
    return duration_s if failure is None or failure == FAILURE_TIMEOUT else None


def median(values: Sequence[float]) -> float:
    return sorted(values)[len(values) // 2]


def quickest_answer(answers: Iterable[Sequence[float]]) -> float | None:
    """The replica's typical answer: the least of the webhooks' median answer times (None before any).
    When every webhook is slow alike (the replica, the network or the receivers' host overloaded), it is
    slow too and nothing is put off; one quick webhook among slow ones keeps them slow beside it."""
    return min((median(values) for values in answers if values), default=None)


def slow(answer_s: float, typical_s: float) -> bool:
    """Whether a webhook answering in ``answer_s`` is slow on a replica whose typical answer is ``typical_s``."""
    return answer_s >= SLOW_FACTOR * typical_s


def crowded(waiting: int, concurrency: int, answer_s: float, typical_s: float) -> bool:
    """Whether one more delivery to a webhook would wait ``PUT_OFF_WAIT_S`` or more for its turn on this
    replica because the webhook is slow: ``waiting`` of its deliveries waiting or under way, answered in
    ``answer_s`` each, ``SLOW_FACTOR`` times the replica's typical answer (``typical_s``) or more. When
    every webhook is slow alike (the replica, the network or the receivers' host overloaded), nothing is
    put off: it would only add work."""
    if waiting < CROWDED_FACTOR * concurrency or not slow(answer_s, typical_s):
        return False
    return answer_s * (waiting - concurrency + 1) / concurrency >= PUT_OFF_WAIT_S


def sending_share(concurrency: int, max_concurrency: int, active: int) -> int:
    """How many requests a webhook can have under way on a replica where ``active`` webhooks have deliveries
    waiting or under way: its own concurrency, or less, its fair share of the replica's slots when they are
    short (``FairSlots``). Ten slow webhooks on 50 slots get 4 each, not 10: their deliveries beyond that
    wait, so they are put off sooner."""
    return max(1, min(concurrency, fair_share(max_concurrency, active)))


def put_off_turn(clock: float, answer_s: float, waiting: int, concurrency: int, last_turn: float) -> float:
    """When a delivery put off now should come back: after those waiting here, and spaced from the last one
    put off by the webhook's answer time over its concurrency, so they return at the pace it takes them."""
    answer = max(answer_s, MIN_ANSWER_S)
    start = max(clock + answer * max(0, waiting - concurrency) / concurrency, last_turn)
    return start + answer / concurrency
