"""Bus mode under faults at scale: a 3-node NATS cluster losing a node, and one of three operator
replicas killed during 5,000 events x 5 webhooks. Real nats-server processes (JetStream, file
storage), the real API server, a real HTTPS receiver; each scenario prints a line like the fault
suite's ``[chaos] <scenario>: lost=N stuck=N duplicated=N``."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import nats
import pytest

from tests.chaos.harness import record
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    FAST_RETRY,
    KubectlFn,
    apply,
    get,
    metric_value,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.nats import (
    BackgroundPublisher,
    NatsCluster,
    NatsServer,
    consumer_leaders,
    consumer_replicas,
    stream_info,
    stream_leader,
)
from tests.support.operator_process import OperatorProcess
from tests.support.receiver import Receiver, Reply
from webhook_operator.bus.messages import (
    DELIVER_CONSUMER,
    DELIVERIES_STREAM,
    EVENTS_STREAM,
    FANOUT_CONSUMER,
    FINAL,
    HEALTH_CONSUMER,
    LOG_PREFIX,
    LOG_STREAM,
)

pytestmark = pytest.mark.integration

SHORT_ACK_WAIT = ("--event-bus-ack-wait", "5s")  # a dead replica's messages come back after 5 s


def bus_operator(
    start_operator: StartOperator,
    namespace: str,
    urls: Sequence[str],
    *extra: str,
    replica: int,
    standby: bool = False,
) -> OperatorProcess:
    flags = [arg for url in urls for arg in ("--event-bus", url)]
    proc = start_operator(namespace, *flags, *extra, standby=standby, env={"POD_NAME": f"replica-{replica}"})
    wait_until(lambda: "bus: consuming" in proc.log() or None, timeout=30, what="the bus worker to consume")
    return proc


def add_webhooks(kubectl: KubectlFn, namespace: str, receiver: Receiver, names: Sequence[str], **spec: object) -> None:
    for name in names:
        apply(kubectl, namespace, webhook_manifest(name, receiver.url(f"/{name}"), ["User.Created"], **spec))
    for name in names:
        wait_ready(kubectl, namespace, name)


def delivered(receiver: Receiver, names: Sequence[str]) -> dict[str, Counter[str]]:
    """2xx answers per delivery id (``webhook-id``), per webhook."""
    out: dict[str, Counter[str]] = {name: Counter() for name in names}
    for request in receiver.received():
        name = request.path.lstrip("/")
        if name in out and 200 <= request.status < 300:
            out[name][request.headers["webhook-id"]] += 1
    return out


def wait_all_delivered(receiver: Receiver, names: Sequence[str], events: int, timeout: float) -> None:
    def done() -> bool | None:
        return all(len(ids) >= events for ids in delivered(receiver, names).values()) or None

    wait_until(done, timeout=timeout, interval=1, what=f"{events} deliveries to each webhook")


async def _unfinished(urls: Sequence[str]) -> dict[str, int]:
    """Messages still in the work-queue streams and messages handed out but not acknowledged."""
    nc = await nats.connect(list(urls))
    try:
        js = nc.jetstream()
        out = {}
        for stream, consumer in ((EVENTS_STREAM, FANOUT_CONSUMER), (DELIVERIES_STREAM, DELIVER_CONSUMER)):
            info = await js.consumer_info(stream, consumer)
            out[stream] = int((await js.stream_info(stream)).state.messages)
            out[f"{consumer} unacked"] = int(info.num_ack_pending or 0) + int(info.num_redelivered or 0)
        return out
    finally:
        await nc.close()


async def _final_records(urls: Sequence[str], namespace: str) -> dict[str, tuple[int, int]]:
    nc = await nats.connect(list(urls))
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"{LOG_PREFIX}{namespace}.*", stream=LOG_STREAM)
        finals: dict[str, list[str]] = {}
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for msg in msgs:
                record = json.loads(msg.data)
                if record.get("outcome") in FINAL:
                    finals.setdefault(msg.subject.rsplit(".", 1)[1], []).append(record["id"])
                await msg.ack()
        return {name: (len(ids), len(set(ids))) for name, ids in finals.items()}
    finally:
        await nc.close()


def final_records(urls: Sequence[str], namespace: str) -> dict[str, tuple[int, int]]:
    """Final request-log records per webhook: (records, distinct delivery ids)."""
    return asyncio.run(_final_records(urls, namespace))


def stuck(urls: Sequence[str], timeout: float = 30.0) -> int:
    """Events or deliveries left on the bus once the run has settled (0 when everything is final)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = asyncio.run(_unfinished(urls))
        except (nats.errors.Error, TimeoutError, OSError):
            left = {"unanswered": 1}
        if not any(left.values()) or time.monotonic() > deadline:
            if any(left.values()):
                print(f"left on the bus: {left}")
            return sum(left.values())
        time.sleep(0.5)


def health_requests(kubectl: KubectlFn, namespace: str, name: str) -> dict[str, Any]:
    return dict((get(kubectl, namespace, f"webhook/{name}").get("status") or {}).get("health") or {})


def wait_health(kubectl: KubectlFn, namespace: str, names: Sequence[str], events: int) -> dict[str, dict[str, Any]]:
    """Every webhook's health once it counts ``events`` requests (or the last one seen), then a few
    flushes later (a record counted twice would show by then)."""

    def reached() -> bool | None:
        return all(health_requests(kubectl, namespace, n).get("requests", 0) >= events for n in names) or None

    try:
        wait_until(reached, timeout=30, interval=0.5)
    except AssertionError:
        pass  # reported by the caller's assertion on the figures
    time.sleep(2.0)
    return {name: health_requests(kubectl, namespace, name) for name in names}


# -- the streams' replica count -------------------------------------------------------------------
def test_stream_replicas_follow_the_flag_on_an_existing_stream(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    nats_cluster: NatsCluster,
) -> None:
    first = bus_operator(start_operator, namespace, nats_cluster.urls, replica=0)
    for stream in (EVENTS_STREAM, DELIVERIES_STREAM, LOG_STREAM):
        assert stream_info(nats_cluster.urls, stream).config.num_replicas == 1
    first.stop()

    second = bus_operator(start_operator, namespace, nats_cluster.urls, "--event-bus-stream-replicas", "3", replica=0)
    for stream in (EVENTS_STREAM, DELIVERIES_STREAM, LOG_STREAM):
        info = stream_info(nats_cluster.urls, stream)
        assert info.config.num_replicas == 3, stream
        assert f"bus: stream {stream}: replicas 1 -> 3" in second.log()
    # Their consumers follow, or losing the one node that holds a consumer would stop its work.
    consumers = [(EVENTS_STREAM, FANOUT_CONSUMER), (DELIVERIES_STREAM, DELIVER_CONSUMER), (LOG_STREAM, HEALTH_CONSUMER)]
    wait_until(
        lambda: all(n == 3 for n in consumer_replicas(nats_cluster.urls, consumers)) or None,
        timeout=20,
        what="3 replicas of every consumer",
    )
    add_webhooks(kubectl, namespace, receiver, ["hook"])
    BackgroundPublisher(nats_cluster.urls, namespace, "User.Created", 5).start().join()
    receiver.wait_for(5, "/hook", timeout=30)


def test_more_stream_replicas_than_nats_servers_is_reported_and_not_fatal(
    namespace: str, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    proc = start_operator(namespace, "--event-bus", nats_server.url, "--event-bus-stream-replicas", "3")
    wait_until(
        lambda: "--event-bus-stream-replicas 3" in proc.log() or None, timeout=20, what="the replica count reported"
    )
    assert "stream not found" not in proc.log()  # the real reason, not the failed update's
    time.sleep(1.0)
    assert proc.running
    assert proc.probe("/readyz") == 503  # not ready without its streams


# -- losing a NATS node -----------------------------------------------------------------------
def test_losing_one_nats_node_of_three_mid_run_loses_nothing(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    nats_cluster: NatsCluster,
) -> None:
    urls = nats_cluster.urls
    replicas = ("--event-bus-stream-replicas", "3")
    leader = bus_operator(start_operator, namespace, urls, *replicas, *SHORT_ACK_WAIT, replica=0)
    standby = bus_operator(start_operator, namespace, urls, *replicas, *SHORT_ACK_WAIT, replica=1, standby=True)
    names = ["a", "b", "c"]
    add_webhooks(kubectl, namespace, receiver, names)
    for name in names:
        receiver.script(f"/{name}", Reply(200, delay_s=0.005))
    events = 1000
    started = time.monotonic()

    first_half = BackgroundPublisher(urls, namespace, "User.Created", events // 2).start()
    receiver.wait_for(300, timeout=60)
    # The node leading the health consumer (the Lease holder's read of the request log): losing it loses
    # acknowledgements in flight there; it often leads the deliveries stream too.
    (victim,) = consumer_leaders(urls, [(LOG_STREAM, HEALTH_CONSUMER)])
    leads = "health consumer" + (" and deliveries stream" if stream_leader(urls, DELIVERIES_STREAM) == victim else "")
    # The rest is published while the node goes: the publisher sends again what was not acknowledged.
    second_half = BackgroundPublisher(
        urls, namespace, "User.Created", events, first=events // 2, window=25, rate=250
    ).start()
    time.sleep(0.5)
    before = len(receiver.received())
    clients = nats_cluster.node(victim).connections()
    nats_cluster.node(victim).kill()
    first_half.join()
    second_half.join()

    wait_all_delivered(receiver, names, events, timeout=90)
    ids = delivered(receiver, names)
    lost = sum(max(0, events - len(c)) for c in ids.values())
    duplicated = sum(sum(c.values()) - len(c) for c in ids.values())
    left = stuck(nats_cluster.running_urls())
    record(
        f"[chaos] bus: kill -9 of NATS node {victim} (leading the {leads}) of 3 mid-run: "
        f"lost={lost} stuck={left} duplicated={duplicated} (events={events} deliveries={events * len(names)}) "
        f"received_before_kill={before} clients_on_it={clients} republished={second_half.repeated} "
        f"seconds={time.monotonic() - started:.0f}"
    )
    assert lost == 0 and left == 0
    health = wait_health(kubectl, namespace, names, events)
    print(f"final log records (records, ids): {final_records(nats_cluster.running_urls(), namespace)}")
    assert {n: (h.get("requests"), h.get("succeeded")) for n, h in health.items()} == {
        n: (events, events) for n in names
    }
    assert leader.running and standby.running


# -- kill -9 of one of three operator replicas ---------------------------------------------------------
def test_sigkill_of_one_of_three_replicas_during_5000_events_x_5_webhooks_loses_nothing(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    urls = [nats_server.url]
    concurrency = 100
    flags = (*SHORT_ACK_WAIT, "--max-concurrency", str(concurrency))
    procs = [bus_operator(start_operator, namespace, urls, *flags, replica=0)]
    procs += [bus_operator(start_operator, namespace, urls, *flags, replica=i, standby=True) for i in (1, 2)]
    names = ["a", "b", "c", "d", "e"]
    # A 30 s attempt timeout: on two cores shared by three replicas, NATS, the API server and this receiver,
    # an answer now and then takes over 5 s, and its retry would be a repeat the kill did not cause.
    add_webhooks(kubectl, namespace, receiver, names, retry={**FAST_RETRY, "timeoutSeconds": 30})
    events = 5000
    started = time.monotonic()

    BackgroundPublisher(urls, namespace, "User.Created", events).start().join()
    receiver.wait_for(events * len(names) // 3, timeout=90)
    # A standby that is delivering (the Lease holder also folds health; its loss recounts what it
    # had written and not acked, as documented): kill -9 with its messages held.
    victim = max(procs[1:], key=lambda p: sum(attempts_on(p, namespace, n) for n in names))
    held = in_flight(victim)
    victim.kill()

    wait_all_delivered(receiver, names, events, timeout=90)
    ids = delivered(receiver, names)
    lost = sum(max(0, events - len(c)) for c in ids.values())
    duplicated = sum(sum(c.values()) - len(c) for c in ids.values())
    left = stuck(urls)
    shares = [sum(attempts_on(p, namespace, n) for n in names) if p.running else None for p in procs]
    record(
        f"[chaos] bus: kill -9 of one of 3 operator replicas: lost={lost} stuck={left} duplicated={duplicated} "
        f"(events={events} deliveries={events * len(names)}) attempts_in_flight_at_kill={held} "
        f"survivors_attempts={shares} seconds={time.monotonic() - started:.0f}"
    )
    assert lost == 0 and left == 0
    # Only messages the killed replica held unacknowledged can be repeated: at most 2 x --max-concurrency.
    assert duplicated <= 2 * concurrency
    health = wait_health(kubectl, namespace, names, events)
    assert {n: (h.get("requests"), h.get("succeeded")) for n, h in health.items()} == {
        n: (events, events) for n in names
    }


def attempts_on(proc: OperatorProcess, namespace: str, webhook: str) -> float:
    if not proc.running:
        return 0.0
    return metric_value(proc.metrics(), "webhook_operator_delivery_attempts_total", webhook=webhook, code="2xx") or 0.0


def in_flight(proc: OperatorProcess) -> float:
    text = proc.metrics()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("webhook_operator_deliveries_in_flight{")
    )
