"""Bus mode with two replicas: spec.rateLimit and spec.ordering measured at a real HTTPS receiver, and
`kubectl webhooks replay` through the plugin (real nats-server, real API server)."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.integration.test_bus import add_webhook, bus_operator
from tests.integration.test_rate_limit_ordering import data_n, most_in_window
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import KubectlFn, apply, metric_value, wait_until, webhook_manifest
from tests.support.nats import NatsServer, publish, stream_messages
from tests.support.operator_process import OperatorProcess
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.integration


def two_replicas(
    start_operator: StartOperator, namespace: str, nats: NatsServer, *extra: str
) -> tuple[OperatorProcess, OperatorProcess]:
    """A Lease holder and a standby, both fanning out and delivering from the bus."""
    leader = bus_operator(start_operator, namespace, nats, *extra, env={"POD_NAME": "replica-0"})
    standby = bus_operator(start_operator, namespace, nats, *extra, standby=True, env={"POD_NAME": "replica-1"})
    return leader, standby


def events(count: int, start: int = 0) -> list[dict[str, object]]:
    return [{"event": "User.Created", "data": {"n": i}} for i in range(start, start + count)]


def test_rate_limit_holds_at_the_receiver_across_two_replicas(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    leader, standby = two_replicas(start_operator, namespace, nats_server)
    rate, burst, count = 5.0, 3, 33
    add_webhook(
        kubectl, namespace, receiver, "limited", ["User.Created"], rateLimit={"requestsPerSecond": rate, "burst": burst}
    )

    publish(nats_server.url, namespace, *events(count))

    got = receiver.wait_for(count, "/limited", timeout=60)
    times = [r.at for r in got]
    span = max(times) - min(times)
    busiest = {w: most_in_window(times, w) for w in (0.05, 0.5, 1.0, 2.0, 3.0)}
    print(f"{count} events at {rate}/s burst {burst}, two replicas: arrived over {span:.2f} s, busiest {busiest}")
    # Both replicas fan out and (without one bucket for the webhook) both would deliver: ~0.3 s in all.
    assert span >= (count - burst) / rate - 0.3, span
    assert span <= (count - burst) / rate + 3.0, span
    assert most_in_window(times, 0.05) <= burst + 1
    for window in (0.5, 1.0, 2.0, 3.0):
        assert most_in_window(times, window) <= burst + rate * window + 1, window
    time.sleep(0.5)
    assert len({r.headers["webhook-id"] for r in receiver.received("/limited")}) == count  # none dropped or repeated
    waited = metric_value(
        leader.metrics(), "webhook_operator_rate_limit_wait_seconds_total", namespace=namespace, webhook="limited"
    )
    assert waited is not None and waited >= 2.0
    assert standby.running
    wait_until(lambda: stream_messages(nats_server.url, "WEBHOOK_OPERATOR_CONTROLLED") == 0 or None, timeout=10)


def test_ordered_across_two_replicas_one_at_a_time_and_a_retrying_head_blocks_the_rest(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    leader, _ = two_replicas(start_operator, namespace, nats_server)
    # The first request (event 0) fails twice; every answer takes 0.2 s, so overlapping requests would show.
    receiver.script("/ordered", Reply(503, delay_s=0.2), Reply(503, delay_s=0.2), Reply(200, delay_s=0.2))
    retry = {"maxRetries": 5, "backoffSeconds": 0.5, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
    add_webhook(kubectl, namespace, receiver, "ordered", ["User.Created"], retry=retry, ordering="Ordered")
    count = 12

    publish(nats_server.url, namespace, *events(count))

    got = receiver.wait_for(count + 2, "/ordered", timeout=60)
    assert [data_n(r) for r in got] == [0, 0, 0, *range(1, count)]
    for before, after in itertools.pairwise(got):
        assert after.at >= before.at + 0.2, "a request started before the previous one was answered"
    time.sleep(1.0)
    assert len(receiver.received("/ordered")) == count + 2
    text = leader.metrics()
    blocked = metric_value(
        text, "webhook_operator_ordered_blocked_seconds_total", namespace=namespace, webhook="ordered"
    )
    assert blocked is not None and blocked > 1.0
    assert metric_value(text, "webhook_operator_ordered_blocked", namespace=namespace, webhook="ordered") == 0


def test_unordered_control_two_replicas_do_not_keep_the_order(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    # The control for the test above: same script and events, default ordering.
    two_replicas(start_operator, namespace, nats_server)
    receiver.script("/unordered", Reply(503, delay_s=0.2), Reply(503, delay_s=0.2), Reply(200, delay_s=0.2))
    retry = {"maxRetries": 5, "backoffSeconds": 0.5, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
    add_webhook(kubectl, namespace, receiver, "unordered", ["User.Created"], retry=retry)
    count = 12
    publish(nats_server.url, namespace, *events(count))
    got = receiver.wait_for(count + 2, "/unordered", timeout=60)
    assert [data_n(r) for r in got] != [0, 0, 0, *range(1, count)]


def test_the_order_survives_a_killed_lease_holder_and_a_restarted_replica(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    short = ("--event-bus-ack-wait", "3s")
    leader, _ = two_replicas(start_operator, namespace, nats_server, *short)
    receiver.script("/restart", Reply(503))
    retry = {"maxRetries": 10, "backoffSeconds": 2, "maxBackoffSeconds": 2, "timeoutSeconds": 5}
    add_webhook(kubectl, namespace, receiver, "restart", ["User.Created"], retry=retry, ordering="Ordered")
    publish(nats_server.url, namespace, *events(5))
    receiver.wait_for(2, "/restart", timeout=30)

    leader.kill()  # SIGKILL: the messages it held come back after the ack wait, to the next Lease holder
    publish(nats_server.url, namespace, *events(3, start=5))  # while nobody holds the Lease
    assert {data_n(r) for r in receiver.received("/restart")} == {0}, "the head blocks the others"
    bus_operator(start_operator, namespace, nats_server, *short, standby=True, env={"POD_NAME": "replica-2"})
    receiver.script("/restart", Reply(200, delay_s=0.2))
    before = len(receiver.received("/restart"))

    got = receiver.wait_for(before + 8, "/restart", timeout=90)[before:]
    assert [data_n(r) for r in got] == list(range(8))
    for earlier, later in itertools.pairwise(got):
        assert later.at >= earlier.at + 0.2
    time.sleep(1.0)
    assert len(receiver.received("/restart")) == before + 8


def test_a_clean_hand_over_returns_the_held_deliveries_at_once_and_keeps_the_order(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    leader, _ = two_replicas(start_operator, namespace, nats_server)  # the default ack wait, 30 s
    receiver.script("/handover", Reply(503))
    retry = {"maxRetries": 10, "backoffSeconds": 2, "maxBackoffSeconds": 2, "timeoutSeconds": 5}
    add_webhook(kubectl, namespace, receiver, "handover", ["User.Created"], retry=retry, ordering="Ordered")
    publish(nats_server.url, namespace, *events(6))
    receiver.wait_for(2, "/handover", timeout=30)

    stopping = time.monotonic()
    leader.stop()  # SIGTERM: what it held is nak'd and the Lease released, so the standby goes on at once
    assert "released the Lease" in leader.log(), "a clean shutdown, not killed after the stop timeout"
    receiver.script("/handover", Reply(200, delay_s=0.1))
    before = len(receiver.received("/handover"))

    got = receiver.wait_for(before + 6, "/handover", timeout=25)[before:]
    assert [data_n(r) for r in got] == list(range(6))
    assert time.monotonic() - stopping < 20, "well within the 30 s ack wait: nothing waited for it"


def test_switching_to_unordered_releases_the_waiting_deliveries_to_every_replica(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    two_replicas(start_operator, namespace, nats_server)
    receiver.script("/switch", Reply(503))
    retry = {"maxRetries": 10, "backoffSeconds": 0.5, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
    add_webhook(kubectl, namespace, receiver, "switch", ["User.Created"], retry=retry, ordering="Ordered")
    publish(nats_server.url, namespace, *events(4))
    receiver.wait_for(2, "/switch", timeout=30)
    assert {data_n(r) for r in receiver.received("/switch")} == {0}
    receiver.script("/switch", Reply(200))

    apply(kubectl, namespace, webhook_manifest("switch", receiver.url("/switch"), ["User.Created"], retry=retry))

    wait_until(lambda: {data_n(r) for r in receiver.received("/switch")} == {0, 1, 2, 3} or None, timeout=30)
    # Drained: the consumer of the controlled path is gone, nothing is left under its subject.
    wait_until(lambda: stream_messages(nats_server.url, "WEBHOOK_OPERATOR_CONTROLLED") == 0 or None, timeout=10)


def test_a_rate_limit_added_applies_to_deliveries_already_retrying_on_the_shared_path(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    two_replicas(start_operator, namespace, nats_server)
    receiver.script("/late", Reply(503))
    retry = {"maxRetries": 10, "backoffSeconds": 1, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
    add_webhook(kubectl, namespace, receiver, "late", ["User.Created"], retry=retry)
    publish(nats_server.url, namespace, *events(4))
    wait_until(lambda: {data_n(r) for r in receiver.received("/late")} == {0, 1, 2, 3} or None, timeout=20)

    limited = {"requestsPerSecond": 0.5, "burst": 1}
    apply(
        kubectl,
        namespace,
        webhook_manifest("late", receiver.url("/late"), ["User.Created"], retry=retry, rateLimit=limited),
    )
    receiver.script("/late", Reply(200))
    time.sleep(1.5)  # every replica has the new spec; retries already sent meanwhile may succeed
    before = len(receiver.received("/late"))

    # Moved to the controlled path as they come back for their retry: at most one request per 2 s.
    wait_until(
        lambda: len({r.headers["webhook-id"] for r in receiver.received("/late") if r.status == 200}) == 4 or None,
        timeout=30,
    )
    later = receiver.received("/late")[before:]
    assert len(later) >= 2, "some deliveries were still retrying at the change"
    for earlier, after in itertools.pairwise(later):
        assert after.at - earlier.at >= 1.8


def test_replay_since_and_failed_only_through_the_plugin_with_the_same_webhook_ids(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    two_replicas(start_operator, namespace, nats_server)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"], retry={"maxRetries": 0})
    publish(nats_server.url, namespace, {"event": "User.Created", "data": {"n": 0}}, msg_ids=["old"])
    receiver.wait_for(1, "/hook")
    time.sleep(15.0)  # "old" falls out of a 12 s window (wide: two plugin runs under load fit in it)
    receiver.script("/hook", Reply(200), Reply(500), Reply(200))
    publish(nats_server.url, namespace, {"event": "User.Created", "data": {"n": 1}}, msg_ids=["ok"])
    receiver.wait_for(2, "/hook")
    publish(nats_server.url, namespace, {"event": "User.Created", "data": {"n": 2}}, msg_ids=["bad"])
    receiver.wait_for(3, "/hook")
    bus = ["-n", namespace, "--event-bus", nats_server.url]
    first_id = {json.loads(r.body)["eventId"]: r.headers["webhook-id"] for r in receiver.received("/hook")}

    def logged() -> bool | None:
        lines = kubectl("webhooks", "logs", "hook", *bus).stdout.splitlines()
        return len(lines) == 4 or None  # header + three final records

    wait_until(logged, timeout=10)
    failed = kubectl("webhooks", "replay", "hook", "--since", "12s", "--failed-only", "--wait", *bus, "--timeout", "20")
    assert "found 1 failed deliveries" in failed.stdout
    assert "delivered 1, failed 0, pending 0" in failed.stdout
    replayed = receiver.received("/hook")[3:]
    assert [json.loads(r.body)["eventId"] for r in replayed] == ["bad"]
    assert replayed[0].headers["webhook-id"] == first_id["bad"], "the same webhook-id"

    every = kubectl("webhooks", "replay", "hook", "--since", "12s", "--wait", *bus, "--timeout", "20")
    assert "found 2 deliveries" in every.stdout and "delivered 2, failed 0, pending 0" in every.stdout
    replayed = receiver.received("/hook")[4:]
    assert sorted(json.loads(r.body)["eventId"] for r in replayed) == ["bad", "ok"]
    assert all(r.headers["webhook-id"] == first_id[json.loads(r.body)["eventId"]] for r in replayed)
    time.sleep(1.0)
    assert len(receiver.received("/hook")) == 6  # "old" (outside the window) is not sent again
