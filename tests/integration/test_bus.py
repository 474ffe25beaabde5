"""Bus mode on a real nats-server (JetStream, file storage), the real API server and real HTTPS receivers."""

from __future__ import annotations

import itertools
import json
import ssl
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from tests.chaos.harness import record
from tests.integration.test_ingress import rbac, tls_files
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    apply,
    get,
    metric_value,
    verify_received,
    wait_for_condition,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.nats import NatsServer, publish, stream_messages
from tests.support.operator_process import OperatorProcess, free_port
from tests.support.receiver import Receiver, Reply
from webhook_operator.signing import message_id

pytestmark = pytest.mark.integration


def add_webhook(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, name: str, events: list[str], **spec: Any
) -> str:
    apply(kubectl, namespace, webhook_manifest(name, receiver.url(f"/{name}"), events, **spec))
    return str(wait_ready(kubectl, namespace, name)["metadata"]["uid"])


def bus_operator(
    start_operator: StartOperator,
    namespace: str,
    nats: NatsServer,
    *extra: str,
    standby: bool = False,
    env: dict[str, str] | None = None,
) -> OperatorProcess:
    proc = start_operator(namespace, "--event-bus", nats.url, *extra, standby=standby, env=env)
    wait_until(lambda: "bus: consuming" in proc.log() or None, timeout=30, what="the bus worker to consume")
    return proc


def test_published_event_is_delivered_signed_with_the_cr_mode_body(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    bus_operator(start_operator, namespace, nats_server)
    uid = add_webhook(kubectl, namespace, receiver, "billing", ["User.*"])
    add_webhook(kubectl, namespace, receiver, "other", ["Order.Paid"])

    (ack,) = publish(nats_server.url, namespace, {"event": "User.Created", "data": {"id": "u1", "name": "zoë"}})

    (request,) = receiver.wait_for(1, "/billing")
    body = json.loads(request.body)
    assert list(body) == ["hookId", "event", "createdAt", "eventId", "data"]
    assert body["hookId"] == f"{namespace}/billing"
    assert body["event"] == "User.Created"
    assert body["data"] == {"id": "u1", "name": "zoë"}
    assert body["createdAt"].endswith("Z") and len(body["createdAt"]) == 24
    assert request.headers["webhook-id"] == message_id(body["eventId"], uid)
    assert request.headers["content-type"] == "application/json"
    verify_received(kubectl, namespace, receiver.received())
    assert receiver.received("/other") == []
    # Every stream is drained: the event was fanned out and the delivery acknowledged.
    wait_until(lambda: stream_messages(nats_server.url, "WEBHOOK_OPERATOR_DELIVERIES") == 0 or None, timeout=10)
    assert stream_messages(nats_server.url, "WEBHOOK_OPERATOR_EVENTS") == 0
    assert ack.seq == 1


def test_nats_msg_id_deduplicates_and_is_the_event_id(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    bus_operator(start_operator, namespace, nats_server)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])
    event = {"event": "User.Created", "data": {"n": 1}}

    acks = publish(nats_server.url, namespace, event, event, event, msg_ids=["evt-42", "evt-42", "evt-43"])

    assert [a.duplicate for a in acks] == [None, True, None]
    requests = receiver.wait_for(2, "/hook")
    time.sleep(1.0)  # a third request would have come by now
    ids = sorted(json.loads(r.body)["eventId"] for r in receiver.received("/hook"))
    assert ids == ["evt-42", "evt-43"]
    verify_received(kubectl, namespace, requests)


def test_bad_messages_are_terminated_and_counted_and_good_ones_still_flow(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    proc = bus_operator(start_operator, namespace, nats_server)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])

    publish(
        nats_server.url,
        namespace,
        b"not json {",
        b"[1, 2]",
        {"event": "bad name!", "data": {}},
        {"data": {}},
        {"event": "User.Created", "data": {"ok": True}},
    )

    (request,) = receiver.wait_for(1, "/hook")
    assert json.loads(request.body)["data"] == {"ok": True}

    def counted() -> bool | None:
        text = proc.metrics()
        json_bad = metric_value(text, "webhook_operator_bus_messages_terminated_total", reason="json")
        event_bad = metric_value(text, "webhook_operator_bus_messages_terminated_total", reason="event")
        return (json_bad, event_bad) == (2.0, 2.0) or None

    wait_until(counted, timeout=10, what="4 terminated messages counted")
    assert stream_messages(nats_server.url, "WEBHOOK_OPERATOR_EVENTS") == 0
    assert proc.running


def test_retries_with_backoff_then_health_written_by_the_leader(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    bus_operator(start_operator, namespace, nats_server)
    add_webhook(kubectl, namespace, receiver, "flaky", ["User.Created"])
    add_webhook(kubectl, namespace, receiver, "down", ["User.Created"])
    receiver.script("/flaky", Reply(503), Reply(500), Reply(200))
    receiver.script("/down", Reply(500))

    publish(nats_server.url, namespace, {"event": "User.Created", "data": {}}, msg_ids=["r-1"])

    flaky = receiver.wait_for(3, "/flaky")
    down = receiver.wait_for(4, "/down")  # maxRetries 3: four attempts
    assert len({r.headers["webhook-id"] for r in flaky + down}) == 2
    gaps = [b.at - a.at for a, b in itertools.pairwise(flaky)]
    assert all(g >= 0.09 for g in gaps), gaps

    def health(name: str) -> dict[str, Any] | None:
        got = (get(kubectl, namespace, f"webhook/{name}").get("status") or {}).get("health") or {}
        return got if got.get("requests") == 1 else None

    assert wait_until(lambda: health("flaky"), timeout=20)["succeeded"] == 1
    assert wait_until(lambda: health("down"), timeout=20)["failed"] == 1
    time.sleep(1.5)
    assert len(receiver.received("/down")) == 4  # Failed is final: no fifth attempt


def test_a_slow_webhook_does_not_hold_up_the_others_and_still_gets_every_delivery(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    # 1 s per answer with 10 at a time: the slow webhook takes 10 deliveries a second. Before, its deliveries
    # waiting for their turn held the replica's places, and the fast one went at the slow one's pace (when
    # the fast one had all 200, the slow one had about 150).
    bus_operator(start_operator, namespace, nats_server, "--max-concurrency", "50")
    add_webhook(kubectl, namespace, receiver, "fast", ["User.Created"])
    add_webhook(kubectl, namespace, receiver, "slow", ["User.Created"], retry={"maxRetries": 0, "timeoutSeconds": 10})
    receiver.script("/slow", Reply(200, delay_s=1.0))
    events = 200

    started = time.monotonic()
    publish(nats_server.url, namespace, *[{"event": "User.Created", "data": {"i": i}} for i in range(events)])

    receiver.wait_for(events, "/fast", timeout=60)
    fast_s, slow_then = time.monotonic() - started, len(receiver.received("/slow"))
    assert slow_then < events // 4, f"the slow webhook had {slow_then} when the fast one had all {events}"
    receiver.wait_for(events, "/slow", timeout=120)  # put off, not lost
    record(
        f"[bus] slow webhook (1 s per answer) beside a fast one, {events} events: fast all in {fast_s:.1f} s "
        f"(slow had {slow_then}), slow all in {time.monotonic() - started:.1f} s"
    )
    time.sleep(1.0)
    for path in ("/fast", "/slow"):
        ids = Counter(r.headers["webhook-id"] for r in receiver.received(path))
        assert len(ids) == events and max(ids.values()) == 1, path


def test_many_slow_webhooks_together_do_not_hold_up_a_fast_one(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    # Ten webhooks answering in 1 s, 10 at a time each, would want 100 requests under way and 200 places
    # waiting: more than the replica's 50 slots and 100 places. Each gets its share of the slots while they
    # are short and is put off beyond what that share lets it send within a second.
    bus_operator(start_operator, namespace, nats_server, "--max-concurrency", "50")
    slow = [f"slow-{i}" for i in range(10)]
    for name in ["fast", *slow]:
        add_webhook(kubectl, namespace, receiver, name, ["User.Created"], retry={"maxRetries": 0, "timeoutSeconds": 10})
    for name in slow:
        receiver.script(f"/{name}", Reply(200, delay_s=1.0))
    events = 50

    started = time.monotonic()
    publish(nats_server.url, namespace, *[{"event": "User.Created", "data": {"i": i}} for i in range(events)])

    receiver.wait_for(events, "/fast", timeout=60)
    fast_s = time.monotonic() - started
    slow_then = sum(len(receiver.received(f"/{name}")) for name in slow)
    assert fast_s < 10, f"the fast webhook took {fast_s:.1f} s (the slow ones had {slow_then})"
    for name in slow:
        receiver.wait_for(events, f"/{name}", timeout=180)  # put off, not lost
    record(
        f"[bus] ten slow webhooks (1 s per answer) beside a fast one, {events} events: fast all in {fast_s:.1f} s "
        f"(the slow ones had {slow_then} of {events * len(slow)}), slow all in {time.monotonic() - started:.1f} s"
    )
    time.sleep(1.0)
    for name in ["fast", *slow]:
        ids = Counter(r.headers["webhook-id"] for r in receiver.received(f"/{name}"))
        assert len(ids) == events and max(ids.values()) == 1, name


# -- replicas and faults ---------------------------------------------------------------------
def delivered_ids(receiver: Receiver, path: str) -> Counter[str]:
    return Counter(r.headers["webhook-id"] for r in receiver.received(path))


def attempts_on(proc: OperatorProcess, namespace: str, webhook: str) -> float:
    return metric_value(proc.metrics(), "webhook_operator_delivery_attempts_total", webhook=webhook, code="2xx") or 0.0


def test_three_replicas_share_deliveries_each_by_one_and_health_is_exact(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    replicas = [bus_operator(start_operator, namespace, nats_server, env={"POD_NAME": "replica-0"})]
    replicas += [
        bus_operator(start_operator, namespace, nats_server, standby=True, env={"POD_NAME": f"replica-{i}"})
        for i in (1, 2)
    ]
    for name in ("a", "b"):
        add_webhook(kubectl, namespace, receiver, name, ["User.Created"])
        receiver.script(f"/{name}", Reply(200, delay_s=0.02))
    events = 300

    publish(nats_server.url, namespace, *[{"event": "User.Created", "data": {"n": i}} for i in range(events)])

    for name in ("a", "b"):
        wait_until(lambda n=name: len(delivered_ids(receiver, f"/{n}")) >= events or None, timeout=90)
    time.sleep(1.0)
    for name in ("a", "b"):
        ids = delivered_ids(receiver, f"/{name}")
        assert len(ids) == events and set(ids.values()) == {1}, "each delivery exactly once"
        shares = [attempts_on(p, namespace, name) for p in replicas]
        print(f"webhook {name}: deliveries per replica {shares}")
        assert sum(shares) == events
        assert all(s > 0 for s in shares), f"every replica delivers: {shares}"

        def health(n: str = name) -> dict[str, Any] | None:
            got = (get(kubectl, namespace, f"webhook/{n}").get("status") or {}).get("health") or {}
            return got if got.get("requests") == events else None

        assert wait_until(health, timeout=20)["succeeded"] == events


def test_sigkill_of_a_replica_mid_delivery_loses_nothing(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    short = ("--event-bus-ack-wait", "5s")  # a dead replica's messages come back after 5 s
    first = bus_operator(start_operator, namespace, nats_server, *short, env={"POD_NAME": "replica-0"})
    second = bus_operator(start_operator, namespace, nats_server, *short, standby=True, env={"POD_NAME": "replica-1"})
    for name in ("a", "b"):
        add_webhook(kubectl, namespace, receiver, name, ["User.Created"])
        receiver.script(f"/{name}", Reply(200, delay_s=0.02))
    events = 400

    publish(nats_server.url, namespace, *[{"event": "User.Created", "data": {"n": i}} for i in range(events)])
    receiver.wait_for(100, timeout=60)
    victim = first if attempts_on(first, namespace, "a") > 0 else second
    victim.kill()

    for name in ("a", "b"):
        wait_until(lambda n=name: len(delivered_ids(receiver, f"/{n}")) >= events or None, timeout=60, interval=1)
    for name in ("a", "b"):
        ids = delivered_ids(receiver, f"/{name}")
        duplicates = sum(ids.values()) - len(ids)
        print(f"webhook {name}: {len(ids)} delivered, {duplicates} duplicate(s) after the kill")
        assert len(ids) == events
        # Only messages the killed replica held can be repeated: at most 2 x --max-concurrency.
        assert duplicates <= 200


def test_an_attempt_longer_than_the_ack_wait_stays_with_its_replica(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    short = ("--event-bus-ack-wait", "2s")
    bus_operator(start_operator, namespace, nats_server, *short, env={"POD_NAME": "replica-0"})
    bus_operator(start_operator, namespace, nats_server, *short, standby=True, env={"POD_NAME": "replica-1"})
    add_webhook(kubectl, namespace, receiver, "slow", ["User.Created"], retry={"timeoutSeconds": 10})
    receiver.script("/slow", Reply(200, delay_s=5.0))

    publish(nats_server.url, namespace, *[{"event": "User.Created", "data": {"n": i}} for i in range(3)])

    receiver.wait_for(3, "/slow", timeout=20)
    time.sleep(7.0)  # past two ack waits: a message handed to the other replica would be sent again
    assert len(receiver.received("/slow")) == 3
    wait_until(lambda: stream_messages(nats_server.url, "WEBHOOK_OPERATOR_DELIVERIES") == 0 or None, timeout=10)


def test_nats_restart_mid_run_loses_nothing(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    proc = bus_operator(start_operator, namespace, nats_server)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])
    receiver.script("/hook", Reply(200, delay_s=0.01))
    publish(nats_server.url, namespace, *[{"event": "User.Created", "data": {"n": i}} for i in range(300)])
    receiver.wait_for(50, "/hook", timeout=60)

    assert proc.probe("/readyz") == 200
    nats_server.kill()
    wait_until(lambda: proc.probe("/readyz") == 503 or None, timeout=10, what="not ready while NATS is down")
    nats_server.start()
    publish(nats_server.url, namespace, *[{"event": "User.Created", "data": {"n": i}} for i in range(300, 400)])
    wait_until(lambda: proc.probe("/readyz") == 200 or None, timeout=20, what="ready again")

    wait_until(lambda: len(delivered_ids(receiver, "/hook")) >= 400 or None, timeout=120, interval=1)
    data = {json.loads(r.body)["data"]["n"] for r in receiver.received("/hook")}
    assert data == set(range(400))
    assert proc.running


# -- request log and the plugin ---------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True], ids=["alone", "in-a-batch"])
def test_request_log_and_plugin_logs_and_redeliver_in_bus_mode(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    nats_server: NatsServer,
    batched: bool,
) -> None:
    bus_operator(start_operator, namespace, nats_server)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"], retry={"maxRetries": 1, "backoffSeconds": 0.1})
    if batched:  # two subscribers: fan-out writes one message for both; the retry goes on its own
        add_webhook(kubectl, namespace, receiver, "other", ["User.Created"])
    receiver.script("/hook", Reply(200), Reply(500), Reply(500), Reply(200))

    publish(nats_server.url, namespace, {"event": "User.Created", "data": {"n": 1}}, msg_ids=["ok-1"])
    receiver.wait_for(1, "/hook")
    publish(nats_server.url, namespace, {"event": "User.Created", "data": {"n": 2}}, msg_ids=["bad-1"])
    receiver.wait_for(3, "/hook")
    bus = ["-n", namespace, "--event-bus", nats_server.url]

    def table(*extra: str) -> list[list[str]] | None:
        lines = kubectl("webhooks", "logs", "hook", *bus, *extra).stdout.splitlines()
        return [line.split()[:5] for line in lines] if len(lines) > 1 else None

    rows = wait_until(lambda: (t := table()) and len(t) == 4 and t, timeout=10)  # header + 3 attempts
    assert rows[0] == ["TIME", "EVENT", "EVENTID", "OUTCOME", "ATTEMPTS"]
    assert [r[2:] for r in rows[1:]] == [
        ["bad-1", "Failed", "2"],
        ["bad-1", "Retrying", "1"],
        ["ok-1", "Succeeded", "1"],
    ]
    failed = table("--failed")
    assert failed is not None and [r[2:] for r in failed[1:]] == [["bad-1", "Failed", "2"]]

    result = kubectl("webhooks", "redeliver", "bad-1", *bus, "--wait", "--timeout", "20")
    assert "1/1 succeeded" in result.stdout
    requests = receiver.received("/hook")
    assert len(requests) == 4
    assert json.loads(requests[-1].body)["eventId"] == "bad-1"
    assert requests[-1].headers["webhook-id"] == requests[1].headers["webhook-id"], "the same webhook-id"
    missing = kubectl("webhooks", "redeliver", "ok-1", *bus, check=False)
    assert missing.returncode == 1 and "no failed delivery" in missing.stderr
    if batched:
        assert Counter(r.headers["webhook-id"] for r in receiver.received("/other")).most_common(1)[0][1] == 1
        assert len(receiver.received("/other")) == 2


# -- the ingress publishes to the bus ------------------------------------------------------------
def test_ingress_publishes_to_the_bus_and_answers_503_while_it_is_down(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    nats_server: NatsServer,
    tls_ca: trustme.CA,
    ca_bundle: Path,
    tmp_path: Path,
) -> None:
    kubectl("create", "serviceaccount", "publisher", "-n", namespace)
    for obj in rbac(namespace, namespace, "publisher"):
        kubectl("apply", "-f", "-", input=json.dumps(obj))
    token = kubectl("create", "token", "publisher", "-n", namespace, "--duration", "1h").stdout.strip()
    cert, key = tls_files(tls_ca, tmp_path)
    port = free_port()
    bus_operator(
        start_operator, namespace, nats_server, "--ingress-port", str(port), "--ingress-tls-cert", str(cert),
        "--ingress-tls-key", str(key),
    )  # fmt: skip
    add_webhook(kubectl, namespace, receiver, "hook", ["User.*"])
    url = f"https://127.0.0.1:{port}/v1/namespaces/{namespace}/events"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_bundle)), timeout=30) as client:
        plain = client.post(url, headers=headers, json={"event": "User.Created", "data": {"n": 1}})
        keyed = client.post(
            url, headers={**headers, "Idempotency-Key": "k-1"}, json={"event": "User.Updated", "data": {"n": 2}}
        )
        again = client.post(
            url, headers={**headers, "Idempotency-Key": "k-1"}, json={"event": "User.Updated", "data": {"n": 2}}
        )
        assert (plain.status_code, keyed.status_code, again.status_code) == (202, 202, 202)
        assert keyed.json()["eventId"] == again.json()["eventId"] == "k-1"
        receiver.wait_for(2, "/hook")
        time.sleep(1.0)
        ids = sorted(json.loads(r.body)["eventId"] for r in receiver.received("/hook"))
        assert ids == sorted([plain.json()["eventId"], "k-1"])
        objects = json.loads(kubectl("get", "webhookevents", "-n", namespace, "-o", "json").stdout)["items"]
        assert objects == [], "bus mode stores no WebhookEvent"

        nats_server.kill()
        down = client.post(url, headers=headers, json={"event": "User.Created", "data": {"n": 3}})
        assert down.status_code == 503
        assert int(down.headers["Retry-After"]) >= 1
        nats_server.start()
        back = wait_until(
            lambda: (
                (r := client.post(url, headers=headers, json={"event": "User.Created", "data": {"n": 4}}))
                and r.status_code == 202
                and r
            ),
            timeout=30,
            interval=1,
        )
        assert back.status_code == 202
        receiver.wait_for(3, "/hook", timeout=30)
    verify_received(kubectl, namespace, receiver.received())


# -- delivery controls in bus mode -----------------------------------------------------------------
def test_filter_applies_at_fan_out_and_a_410_answered_to_any_replica_suspends_the_webhook(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    leader = bus_operator(start_operator, namespace, nats_server, env={"POD_NAME": "replica-0"})
    standby = bus_operator(start_operator, namespace, nats_server, standby=True, env={"POD_NAME": "replica-1"})
    add_webhook(kubectl, namespace, receiver, "pro", ["User.*"], filter='event.data.plan == "pro"')
    add_webhook(kubectl, namespace, receiver, "gone", ["Order.Paid"])
    receiver.script("/gone", Reply(410, b"gone"))

    publish(
        nats_server.url,
        namespace,
        {"event": "User.Created", "data": {"plan": "free"}},
        {"event": "User.Created", "data": {"plan": "pro"}},
        *[{"event": "Order.Paid", "data": {"n": i}} for i in range(4)],
    )

    (request,) = receiver.wait_for(1, "/pro")
    assert json.loads(request.body)["data"] == {"plan": "pro"}
    suspended = wait_for_condition(kubectl, namespace, "webhook/gone", "Ready", "False", reason="AutoDisabled")
    assert suspended["status"]["autoDisable"]["reason"] == "Gone"
    time.sleep(1.0)
    assert receiver.received("/pro") == [request], "the free-plan event was filtered out"
    gone = receiver.received("/gone")
    assert 1 <= len(gone) <= 4  # attempts already under way when the leader suspended it
    # The 410 may have been answered to either replica: the leader decided from the request log.
    attempts = [
        metric_value(p.metrics(), "webhook_operator_delivery_attempts_total", webhook="gone", code="4xx") or 0.0
        for p in (leader, standby)
    ]
    assert sum(attempts) == len(gone)


def test_sigterm_of_the_leader_mid_run_keeps_health_exact_across_the_hand_over(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator, nats_server: NatsServer
) -> None:
    short = ("--event-bus-ack-wait", "5s")
    first = bus_operator(start_operator, namespace, nats_server, *short, env={"POD_NAME": "replica-0"})
    bus_operator(start_operator, namespace, nats_server, *short, standby=True, env={"POD_NAME": "replica-1"})
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])
    receiver.script("/hook", Reply(200, delay_s=0.01))
    events = 400

    publish(nats_server.url, namespace, *[{"event": "User.Created", "data": {"n": i}} for i in range(events)])
    receiver.wait_for(100, "/hook", timeout=60)
    first.stop()  # SIGTERM: attempts under way finish and are recorded, health flushed, Lease released

    wait_until(lambda: len(delivered_ids(receiver, "/hook")) >= events or None, timeout=60, interval=1)
    ids = delivered_ids(receiver, "/hook")
    assert len(ids) == events and sum(ids.values()) == events, "nothing lost, nothing sent twice"

    def health() -> dict[str, Any] | None:
        got = (get(kubectl, namespace, "webhook/hook").get("status") or {}).get("health") or {}
        return got if got.get("requests", 0) >= events else None

    assert wait_until(health, timeout=30)["requests"] == events
    time.sleep(2.0)  # a record counted twice would show in the next flush
    assert (get(kubectl, namespace, "webhook/hook")["status"]["health"])["requests"] == events
