"""Two replicas and a Lease: one delivers, the other takes over on a kill or a SIGTERM; probes that mean something."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    apply,
    create,
    event_manifest,
    get,
    get_or_none,
    metric_value,
    verify_received,
    wait_event_final,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.operator_process import OperatorProcess
from tests.support.receiver import Receiver, Reply
from tests.support.tcp_proxy import TcpProxy
from webhook_operator.kube import KubeClient, load_credentials
from webhook_operator.leader import ElectionConfig, LeaderElector

pytestmark = pytest.mark.integration

LEASE = "webhook-operator"
LEASE_DURATION_S = 15.0
RETRY_PERIOD_S = 2.0


@pytest.fixture(autouse=True)
def every_request_is_signed(kubectl: KubectlFn, namespace: str, receiver: Receiver) -> Iterator[None]:
    yield
    verify_received(kubectl, namespace, receiver.received())


def is_leader(operator: OperatorProcess) -> bool:
    try:
        return metric_value(operator.metrics(), "webhook_operator_leader") == 1.0
    except OSError:
        return False


def lease_holder(kubectl: KubectlFn, namespace: str) -> str:
    lease = get_or_none(kubectl, namespace, f"lease/{LEASE}") or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def add_webhook(kubectl: KubectlFn, namespace: str, receiver: Receiver, **retry: float) -> None:
    policy = {"maxRetries": 3, "backoffSeconds": 0.1, "maxBackoffSeconds": 1, "timeoutSeconds": 10, **retry}
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/hook"), ["User.*"], retry=policy))
    wait_ready(kubectl, namespace, "hook")


def start_pair(start_operator: StartOperator, namespace: str) -> tuple[OperatorProcess, OperatorProcess]:
    first = start_operator(namespace, env={"POD_NAME": "replica-a"})
    second = start_operator(namespace, standby=True, env={"POD_NAME": "replica-b"})
    return first, second


def create_many(kubectl: KubectlFn, namespace: str, count: int) -> list[str]:
    """``count`` events in one request to the API server each, from one kubectl call."""
    items = [event_manifest("User.Created", {"n": i}) for i in range(count)]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    out = kubectl("create", "-n", namespace, "-o", "name", "-f", "-", input=listing)
    return [line.split("/", 1)[1] for line in out.stdout.split()]


def delivered_ids(receiver: Receiver) -> Counter[str]:
    return Counter(r.headers["webhook-id"] for r in receiver.received("/hook"))


def test_two_replicas_elect_exactly_one_leader_and_deliver_every_event_once(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    first, second = start_pair(start_operator, namespace)
    add_webhook(kubectl, namespace, receiver)
    assert lease_holder(kubectl, namespace).startswith("replica-a_")
    assert is_leader(first) and not is_leader(second)
    # The standby keeps campaigning: it renews its view of the Lease, never the Lease itself.
    time.sleep(2 * RETRY_PERIOD_S + 0.5)
    assert lease_holder(kubectl, namespace).startswith("replica-a_")
    assert is_leader(first) and not is_leader(second)
    assert second.probe("/readyz") == 200, "a standby is ready: ready to take over"

    names = [create(kubectl, namespace, event_manifest("User.Created", {"n": i})) for i in range(20)]
    events = [wait_event_final(kubectl, namespace, n) for n in names]
    assert [e["status"]["phase"] for e in events] == ["Delivered"] * 20
    time.sleep(1)  # room for a second delivery, should one be coming
    counts = delivered_ids(receiver)
    assert len(counts) == 20 and set(counts.values()) == {1}, counts
    # The standby never wrote: no attempts counted there.
    assert "webhook_operator_delivery_attempts_total{" not in second.metrics()


def test_sigkill_of_the_leader_the_standby_takes_over_within_the_lease_and_finishes_pending_deliveries(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    first, second = start_pair(start_operator, namespace)
    add_webhook(kubectl, namespace, receiver)
    receiver.script("/hook", Reply(delay_s=0.3))
    names = create_many(kubectl, namespace, 40)
    receiver.wait_for(5, "/hook")
    first.kill()
    killed_at = time.monotonic()
    sent_before = len(receiver.received("/hook"))
    more = create_many(kubectl, namespace, 10)

    wait_until(lambda: is_leader(second), timeout=LEASE_DURATION_S + 10, interval=0.2, what="standby leads")
    took_over_s = time.monotonic() - killed_at
    assert took_over_s <= LEASE_DURATION_S + RETRY_PERIOD_S + 1.5, took_over_s
    assert lease_holder(kubectl, namespace).startswith("replica-b_")

    events = [wait_event_final(kubectl, namespace, n, timeout=60) for n in names + more]
    assert [e["status"]["phase"] for e in events] == ["Delivered"] * 50
    counts = delivered_ids(receiver)
    expected = {e["status"]["deliveries"][0]["id"] for e in events}
    lost = expected - set(counts)
    duplicates = sum(c - 1 for c in counts.values())
    print(f"take-over {took_over_s:.1f}s; lost {len(lost)}; duplicates {duplicates}; sent before kill {sent_before}")
    assert not lost
    # Only attempts in flight at the kill can be repeated: at most --per-webhook-concurrency (10) of them.
    assert duplicates <= 10


def test_sigterm_lets_the_in_flight_attempt_finish_records_it_and_releases_the_lease(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    first, second = start_pair(start_operator, namespace)
    add_webhook(kubectl, namespace, receiver, maxRetries=0)
    receiver.script("/hook", Reply(delay_s=3.0))
    name = create(kubectl, namespace, event_manifest("User.Created", {"slow": True}))
    receiver.wait_for(1, "/hook")
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(30)
    exited_at = time.monotonic()

    event = get(kubectl, namespace, f"webhookevent/{name}")
    (entry,) = event["status"]["deliveries"]
    # Recorded by the stopping leader itself, before it let go of the Lease.
    assert event["status"]["phase"] == "Delivered", event["status"]
    assert entry["outcome"] == "Succeeded" and entry["attempts"] == 1 and entry.get("statusCode") == 200, entry

    wait_until(lambda: is_leader(second), timeout=LEASE_DURATION_S, interval=0.1, what="standby leads")
    handover_s = time.monotonic() - exited_at
    # Health was flushed before the exit, and the standby follows it.
    assert get(kubectl, namespace, "webhook/hook")["status"]["health"], "health not flushed"
    wait_until(
        lambda: (
            metric_value(second.metrics(), "webhook_operator_webhook_requests_24h", namespace=namespace, webhook="hook")
            == 1.0
        ),
        timeout=10,
        what="the new leader counts the delivery its predecessor recorded",
    )
    print(f"standby leads {handover_s:.1f}s after the leader exited")
    assert handover_s <= RETRY_PERIOD_S + 1.0, handover_s
    assert lease_holder(kubectl, namespace).startswith("replica-b_")
    time.sleep(1)
    assert len(receiver.received("/hook")) == 1, "the standby must not send the recorded delivery again"
    assert wait_event_final(kubectl, namespace, name)["status"]["deliveries"][0]["attempts"] == 1

    # The webhook was created while the new leader stood by: it signs with the key the old one made.
    receiver.script("/hook", Reply())
    after = create(kubectl, namespace, event_manifest("User.Created", {"after": "hand-over"}))
    assert wait_event_final(kubectl, namespace, after)["status"]["phase"] == "Delivered"


def test_sigterm_with_nothing_in_flight_exits_fast_and_the_event_watch_stops_first(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    add_webhook(kubectl, namespace, receiver)
    assert operator.proc is not None
    started = time.monotonic()
    operator.proc.send_signal(signal.SIGTERM)
    operator.proc.wait(30)
    assert time.monotonic() - started < 5
    assert "released the Lease" in operator.log()
    assert lease_holder(kubectl, namespace) == ""


def test_no_leader_election_delivers_alone_without_a_lease(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace, "--no-leader-election")
    add_webhook(kubectl, namespace, receiver)
    name = create(kubectl, namespace, event_manifest("User.Created", {"n": 1}))
    assert wait_event_final(kubectl, namespace, name)["status"]["phase"] == "Delivered"
    assert is_leader(operator)
    assert get_or_none(kubectl, namespace, f"lease/{LEASE}") is None


def test_healthz_answers_before_webhooks_load_and_readyz_follows_the_api_server(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, cluster: object, ca_bundle: Path, tmp_path: Path
) -> None:
    original: Path = cluster.kubeconfig  # type: ignore[attr-defined]
    server = json.loads(kubectl("config", "view", "--minify", "-o", "json").stdout)["clusters"][0]["cluster"]["server"]
    url = urlparse(server)
    proxy = TcpProxy((url.hostname or "127.0.0.1", int(url.port or 443)))
    # Before the operator starts: it is loaded at start-up.
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/hook"), ["User.*"]))
    operator = OperatorProcess(
        proxy.kubeconfig(original, tmp_path / "proxied.kubeconfig"),
        [
            *("--namespace", namespace, "--leader-election-namespace", namespace),
            *("--allow-cidr", "127.0.0.0/8", "--ca-bundle", str(ca_bundle)),
        ],
        tmp_path / "operator.log",
    )
    proxy.hold()  # an API server that does not answer (yet)
    try:
        with pytest.raises(AssertionError, match="not ready"):
            # Healthy, but it cannot load the webhooks, so never "delivering"; it must keep running.
            operator.start(timeout=3, kill_unready=False)
        assert operator.running
        assert operator.probe("/healthz") == 200, "liveness must not wait for the webhooks"
        assert operator.probe("/readyz") == 503
        assert "loaded" not in operator.log()

        proxy.release()
        wait_until(lambda: operator.probe("/readyz") == 200, timeout=30, what="/readyz 200 once loaded and watching")
        assert "loaded 1 webhook(s)" in operator.log()

        assert is_leader(operator)

        proxy.cut()  # the API server is unreachable from here on
        cut_at = time.monotonic()
        wait_until(lambda: operator.probe("/readyz") == 503, timeout=30, what="/readyz 503 without the API server")
        print(f"/readyz 503 {time.monotonic() - cut_at:.1f}s after the API server became unreachable")
        assert operator.probe("/healthz") == 200
        # Unable to renew, it stops leading after the renew deadline: before its Lease could expire.
        wait_until(lambda: not is_leader(operator), timeout=30, what="the leader steps down")
        stepped_down_s = time.monotonic() - cut_at
        print(f"stepped down {stepped_down_s:.1f}s after the API server became unreachable")
        assert stepped_down_s < LEASE_DURATION_S, stepped_down_s

        proxy.restore()
        wait_until(lambda: operator.probe("/readyz") == 200, timeout=30, what="/readyz 200 again")
        wait_until(lambda: is_leader(operator), timeout=10, what="it leads again")
        name = create(kubectl, namespace, event_manifest("User.Created", {"after": "outage"}))
        status = wait_event_final(kubectl, namespace, name)["status"]
        assert status["phase"] == "Delivered", status
    finally:
        operator.stop()
        proxy.close()


def test_an_api_outage_that_costs_the_lease_resumes_the_same_term_and_sends_nothing_twice(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    cluster: object,
    tmp_path: Path,
) -> None:
    """Both replicas lose the API server for longer than the renew deadline while the leader's attempts
    are answered: it stops leading, but when the API server is back it leads again before the standby
    may (nobody could renew, so nobody's silence counts) and writes what was answered instead of a new
    term sending it again. Before: every answered-but-unwritten delivery was sent twice."""
    server = json.loads(kubectl("config", "view", "--minify", "-o", "json").stdout)["clusters"][0]["cluster"]["server"]
    url = urlparse(server)
    proxy = TcpProxy((url.hostname or "127.0.0.1", int(url.port or 443)))
    proxied = proxy.kubeconfig(cluster.kubeconfig, tmp_path / "proxied.kubeconfig")  # type: ignore[attr-defined]
    try:
        first = start_operator(namespace, kubeconfig=proxied, env={"POD_NAME": "replica-a"})
        second = start_operator(namespace, standby=True, kubeconfig=proxied, env={"POD_NAME": "replica-b"})
        add_webhook(kubectl, namespace, receiver)
        receiver.script("/hook", Reply(delay_s=3))
        names = create_many(kubectl, namespace, 20)
        receiver.wait_for(10, "/hook")  # the webhook's 10 slots are busy
        proxy.cut()  # the API server is gone for both replicas; the receiver answers meanwhile
        cut_at = time.monotonic()
        wait_until(lambda: not is_leader(first), timeout=20, interval=0.2, what="the leader stops leading")
        stopped_s = time.monotonic() - cut_at
        answered = len(receiver.received("/hook"))
        # Longer than the Lease: to the standby the record has not changed for more than its duration.
        time.sleep(max(0.0, LEASE_DURATION_S + 1 - (time.monotonic() - cut_at)))
        assert not is_leader(first) and not is_leader(second)
        proxy.restore()
        restored_at = time.monotonic()
        wait_until(lambda: is_leader(first) or is_leader(second), timeout=LEASE_DURATION_S, what="a leader")
        resumed_s = time.monotonic() - restored_at

        receiver.script("/hook", Reply())
        events = [wait_event_final(kubectl, namespace, n, timeout=60) for n in names]
        assert [e["status"]["phase"] for e in events] == ["Delivered"] * 20
        time.sleep(1)  # room for a second delivery, should one be coming
        counts = delivered_ids(receiver)
        duplicates = sum(c - 1 for c in counts.values())
        print(
            f"stepped down {stopped_s:.1f}s after the cut; {answered} sent before the API server was back; "
            f"leading again {resumed_s:.1f}s after it was; duplicates {duplicates}"
        )
        assert answered >= 10
        assert is_leader(first) and not is_leader(second), "the replica that stopped leads again"
        assert "leading again as the leader" in first.log()
        assert len(counts) == 20 and duplicates == 0, counts
        assert lease_holder(kubectl, namespace).startswith("replica-a_")
        assert "webhook_operator_delivery_attempts_total{" not in second.metrics()
    finally:
        proxy.close()


def test_two_candidates_racing_for_one_lease_never_both_win(
    cluster: object, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))  # type: ignore[attr-defined]

    async def race(round_: int) -> list[bool]:
        kube = KubeClient(load_credentials())
        try:
            electors = [
                LeaderElector(
                    kube,
                    ElectionConfig(namespace, f"race-{round_}", f"candidate-{i}"),
                    on_started=nothing,
                    on_stopped=nothing,
                )
                for i in range(3)
            ]
            # Twice each: the second round finds the Lease written and must respect it.
            first = await asyncio.gather(*(e._try_acquire_or_renew() for e in electors))
            second = await asyncio.gather(*(e._try_acquire_or_renew() for e in electors))
            assert first == second, (first, second)
            # Released, the Lease is free for all: three updates from the same resourceVersion, one winner.
            winner = electors[first.index(True)]
            winner.leading = True
            assert await winner.release()
            third = await asyncio.gather(*(e._try_acquire_or_renew() for e in electors))
            assert third.count(True) == 1, third
            return list(first)
        finally:
            await kube.close()

    async def nothing() -> None:
        return None

    for round_ in range(10):
        winners = asyncio.run(race(round_))
        assert winners.count(True) == 1, winners
