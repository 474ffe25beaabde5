"""spec.rateLimit and spec.ordering on the real control plane, measured at a real HTTPS receiver."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.conftest import KubectlFn
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    apply,
    create,
    event_manifest,
    get,
    metric_value,
    wait_event_final,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.receiver import Received, Receiver, Reply

pytestmark = pytest.mark.integration


def create_many(kubectl: KubectlFn, namespace: str, count: int, prefix: str = "ev") -> list[str]:
    """``count`` WebhookEvents in one request-burst (one kubectl call), named prefix-000...; their names."""
    names = [f"{prefix}-{i:03d}" for i in range(count)]
    items = [event_manifest("User.Created", {"n": i}, name=name) for i, name in enumerate(names)]
    kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )
    return names


def most_in_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max(sum(1 for t in ordered[i:] if t <= start + window) for i, start in enumerate(ordered))


def test_the_receiver_never_sees_more_than_burst_plus_the_sustained_rate(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    rate, burst, count = 5.0, 3, 23
    apply(
        kubectl,
        namespace,
        webhook_manifest("limited", receiver.url("/limited"), rateLimit={"requestsPerSecond": rate, "burst": burst}),
    )
    wait_ready(kubectl, namespace, "limited")
    names = create_many(kubectl, namespace, count)
    got = receiver.wait_for(count, "/limited", timeout=60)
    times = [r.at for r in got]
    span = max(times) - min(times)
    # (count - burst) tokens refill at `rate`: 4 s at least; a limiter that did not hold would take ~0.3 s.
    assert span >= (count - burst) / rate - 0.3, span
    assert span <= (count - burst) / rate + 3.0, span  # and it does not throttle far below the rate
    # Arrival times carry a little jitter (TLS, threads): one request of slack per window.
    assert most_in_window(times, 0.05) <= burst + 1
    for window in (0.5, 1.0, 2.0, 3.0):
        assert most_in_window(times, window) <= burst + rate * window + 1, window
    # Never dropped: every event Delivered; the wait shows in the request log.
    waits = []
    for name in names:
        entry = wait_event_final(kubectl, namespace, name, timeout=30)["status"]["deliveries"][0]
        assert entry["outcome"] == "Succeeded"
        waits.append(entry.get("rateLimitedMs", 0))
    assert sum(1 for w in waits if w > 0) >= count - burst - 2
    assert max(waits) >= 2000  # the last ones waited for about (count - burst) / rate seconds
    log = kubectl("webhooks", "logs", "limited", "-n", namespace).stdout.splitlines()
    assert log[0].split()[7] == "WAITED"
    assert sum(1 for line in log[1:] if line.split()[7] != "-") >= count - burst - 2
    text = operator.metrics()
    waited = metric_value(
        text, "webhook_operator_rate_limit_wait_seconds_total", namespace=namespace, webhook="limited"
    )
    assert waited is not None and waited >= 2.0
    attempts = metric_value(
        text, "webhook_operator_rate_limited_attempts_total", namespace=namespace, webhook="limited"
    )
    assert attempts is not None and attempts >= count - burst - 2


def test_a_rate_limit_change_applies_to_attempts_already_waiting(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(
        kubectl,
        namespace,
        webhook_manifest("slow", receiver.url("/slow"), rateLimit={"requestsPerSecond": 0.2, "burst": 1}),
    )
    wait_ready(kubectl, namespace, "slow")
    create_many(kubectl, namespace, 6)
    receiver.wait_for(1, "/slow", timeout=30)
    time.sleep(1.0)
    assert len(receiver.received("/slow")) == 1  # the next token is 5 s away
    apply(
        kubectl,
        namespace,
        webhook_manifest("slow", receiver.url("/slow"), rateLimit={"requestsPerSecond": 20, "burst": 1}),
    )
    started = time.time()
    got = receiver.wait_for(6, "/slow", timeout=30)
    assert got[-1].at - started < 4.0  # the waiting attempts picked up the new rate


def test_attempts_waiting_for_a_token_of_a_deleted_webhook_are_not_sent(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(
        kubectl,
        namespace,
        webhook_manifest("gone", receiver.url("/gone"), rateLimit={"requestsPerSecond": 0.25, "burst": 1}),
    )
    wait_ready(kubectl, namespace, "gone")
    names = create_many(kubectl, namespace, 3)
    receiver.wait_for(1, "/gone", timeout=30)
    kubectl("delete", "-n", namespace, "webhook/gone")
    for name in names[1:]:
        entry = wait_event_final(kubectl, namespace, name, timeout=30)["status"]["deliveries"][0]
        assert (entry["outcome"], entry["error"]) == ("Failed", "not delivered: webhook deleted")
    time.sleep(4.5)  # past the next token
    assert len(receiver.received("/gone")) == 1


def test_attempts_waiting_for_tokens_hold_no_slot_and_other_webhooks_go_on(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    # Two global slots only: were waiting attempts holding one, the second webhook would wait too.
    start_operator(namespace, "--max-concurrency", "2", "--per-webhook-concurrency", "1")
    slow = webhook_manifest("slow", receiver.url("/slow"), ["User.*"], rateLimit={"requestsPerSecond": 0.5, "burst": 1})
    apply(kubectl, namespace, slow)
    apply(kubectl, namespace, webhook_manifest("fast", receiver.url("/fast"), ["Order.*"]))
    wait_ready(kubectl, namespace, "slow")
    wait_ready(kubectl, namespace, "fast")
    create_many(kubectl, namespace, 8)
    receiver.wait_for(1, "/slow", timeout=30)
    started = time.time()
    items = [event_manifest("Order.Paid", {"n": i}, name=f"order-{i}") for i in range(6)]
    kubectl(
        "create", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )
    got = receiver.wait_for(6, "/fast", timeout=30)
    assert got[-1].at - started < 3.0
    assert len(receiver.received("/slow")) <= 3  # still throttled meanwhile
    assert wait_event_final(kubectl, namespace, "order-5")["status"]["phase"] == "Delivered"


def data_n(request: Received) -> int:
    return int(json.loads(request.body)["data"]["n"])


def test_ordered_delivery_sends_one_at_a_time_and_a_retrying_head_blocks_the_rest(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    # The first request (event 0) fails twice; every answer takes 0.3 s, so overlapping requests would show.
    receiver.script("/ordered", Reply(503, delay_s=0.3), Reply(503, delay_s=0.3), Reply(200, delay_s=0.3))
    retry = {"maxRetries": 5, "backoffSeconds": 0.5, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
    apply(kubectl, namespace, webhook_manifest("ordered", receiver.url("/ordered"), retry=retry, ordering="Ordered"))
    wait_ready(kubectl, namespace, "ordered")
    names = create_many(kubectl, namespace, 5)
    got = receiver.wait_for(7, "/ordered", timeout=60)
    assert [data_n(r) for r in got] == [0, 0, 0, 1, 2, 3, 4]
    for before, after in itertools.pairwise(got):
        assert after.at >= before.at + 0.3, "a request started before the previous one was answered"
    for name in names:
        assert wait_event_final(kubectl, namespace, name)["status"]["phase"] == "Delivered"
    text = operator.metrics()
    blocked = metric_value(
        text, "webhook_operator_ordered_blocked_seconds_total", namespace=namespace, webhook="ordered"
    )
    assert blocked is not None and blocked > 1.0
    assert metric_value(text, "webhook_operator_ordered_blocked", namespace=namespace, webhook="ordered") == 0


def test_an_ordered_head_waiting_long_for_its_retry_still_blocks_the_next(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    # A retry due more than a few seconds later leaves memory for other webhooks (parked); an Ordered
    # webhook's head must keep its place, or the next event would go first.
    start_operator(namespace)
    receiver.script("/long", Reply(503), Reply(200))
    retry = {"maxRetries": 1, "backoffSeconds": 12, "maxBackoffSeconds": 12, "timeoutSeconds": 5}
    apply(kubectl, namespace, webhook_manifest("ordered", receiver.url("/long"), retry=retry, ordering="Ordered"))
    wait_ready(kubectl, namespace, "ordered")
    create_many(kubectl, namespace, 2)
    got = receiver.wait_for(3, "/long", timeout=40)
    assert [data_n(r) for r in got] == [0, 0, 1]
    assert got[1].at - got[0].at >= 5.5


def test_unordered_delivery_is_not_blocked_by_a_retrying_event(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    # The control for the test above: same script, default ordering.
    start_operator(namespace)
    receiver.script("/unordered", Reply(503, delay_s=0.3), Reply(503, delay_s=0.3), Reply(200, delay_s=0.3))
    retry = {"maxRetries": 5, "backoffSeconds": 0.5, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
    apply(kubectl, namespace, webhook_manifest("unordered", receiver.url("/unordered"), retry=retry))
    wait_ready(kubectl, namespace, "unordered")
    create_many(kubectl, namespace, 5)
    got = receiver.wait_for(7, "/unordered", timeout=60)
    assert [data_n(r) for r in got] != [0, 0, 0, 1, 2, 3, 4]


def test_the_order_survives_a_restart_and_follows_creation_time_not_names(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/restart", Reply(503))
    retry = {"maxRetries": 10, "backoffSeconds": 1, "maxBackoffSeconds": 2, "timeoutSeconds": 5}
    apply(kubectl, namespace, webhook_manifest("ordered", receiver.url("/restart"), retry=retry, ordering="Ordered"))
    wait_ready(kubectl, namespace, "ordered")
    # Created z, m, a a second or more apart: the API lists them a, m, z (by name); the order is z, m, a.
    for i, name in enumerate(["ev-z", "ev-m", "ev-a"]):
        create(kubectl, namespace, event_manifest("User.Created", {"n": i}, name=name))
        time.sleep(1.1)
    receiver.wait_for(2, "/restart", timeout=30)
    operator.stop()
    assert {data_n(r) for r in receiver.received("/restart")} == {0}  # the head blocks the others
    create(kubectl, namespace, event_manifest("User.Created", {"n": 3}, name="ev-b"))  # while stopped
    time.sleep(1.1)
    receiver.script("/restart", Reply(200, delay_s=0.2))
    before = len(receiver.received("/restart"))
    start_operator(namespace)
    got = receiver.wait_for(before + 4, "/restart", timeout=60)[before:]
    assert [data_n(r) for r in got] == [0, 1, 2, 3]
    for before_r, after in itertools.pairwise(got):
        assert after.at >= before_r.at + 0.2
    for name in ("ev-z", "ev-m", "ev-a", "ev-b"):
        assert wait_event_final(kubectl, namespace, name)["status"]["phase"] == "Delivered"


def test_switching_to_ordered_orders_the_deliveries_still_open(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/switch", Reply(503))
    retry = {"maxRetries": 10, "backoffSeconds": 1, "maxBackoffSeconds": 2, "timeoutSeconds": 5}
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/switch"), retry=retry))
    wait_ready(kubectl, namespace, "hook")
    create_many(kubectl, namespace, 3)
    wait_until(lambda: {data_n(r) for r in receiver.received("/switch")} == {0, 1, 2}, what="all three retrying")
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/switch"), retry=retry, ordering="Ordered"))
    wait_until(lambda: get(kubectl, namespace, "webhook/hook")["status"].get("observedGeneration") == 2)
    time.sleep(1.5)  # attempts already under way at the switch finish
    settled = len(receiver.received("/switch"))
    time.sleep(2.5)  # the head keeps failing: only it is retried now
    assert {data_n(r) for r in receiver.received("/switch")[settled:]} == {0}
    receiver.script("/switch", Reply(200, delay_s=0.3))

    def after_head() -> list[int] | None:
        later = [data_n(r) for r in receiver.received("/switch")[settled:] if data_n(r) != 0]
        return later if len(later) >= 2 else None

    assert wait_until(after_head, timeout=30, what="events 1 and 2") == [1, 2]
    time.sleep(1.0)
    assert after_head() == [1, 2]  # each once
