"""The fault suite: real control plane, real HTTPS receivers, real operator processes, real faults.

Each scenario prints one line ``[chaos] <scenario>: lost=N stuck=N duplicated=N ...`` (also appended
to .chaos-results.log) and asserts lost=0 and stuck=0; duplicates are allowed only for attempts in
flight at a kill, and counted. ``make chaos`` runs them all (WEBHOOK_OPERATOR_CHAOS=1); ``make test``
runs the short ones. Sizes and durations come from CHAOS_* environment variables (defaults: the
figures of issue 12, except the side-by-side run: CHAOS_SIDE_BY_SIDE_S, 120 s unless set).
CHAOS_OPERATOR_PYTHONPATH runs another tree of the operator (for before/after figures).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.controlplane import ControlPlane
from tests.chaos.harness import Publisher, env_number, p99, record, rss_mib, tally, wait_settled, webhook_uids
from tests.conftest import Cluster
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import KubectlFn, apply, metric_value, wait_ready, webhook_manifest
from tests.support.operator_process import OperatorProcess
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.integration

LONG = os.environ.get("WEBHOOK_OPERATOR_CHAOS") == "1"
long_only = pytest.mark.skipif(not LONG, reason="long fault scenario: run by `make chaos` (WEBHOOK_OPERATOR_CHAOS=1)")
# Completed events are kept, so every one can be counted at the end.
KEEP = ["--event-ttl", "0", "--failed-event-ttl", "0", "--max-completed-events", "0"]
MAX_CONCURRENCY = 100  # the operator's default --max-concurrency, which these scenarios keep
PATIENT = {"maxRetries": 10, "backoffSeconds": 1, "maxBackoffSeconds": 5, "timeoutSeconds": 10}


def leads(operator: OperatorProcess) -> bool:
    return metric_value(operator.metrics(), "webhook_operator_leader") == 1.0


def operator_env() -> dict[str, str] | None:
    tree = os.environ.get("CHAOS_OPERATOR_PYTHONPATH")
    return {"PYTHONPATH": tree} if tree else None


def make_webhooks(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    count: int,
    *,
    event: str = "Order.Created",
    retry: dict[str, Any] | None = None,
    prefix: str = "hook",
) -> list[str]:
    names = [f"{prefix}{i}" for i in range(count)]
    for name in names:
        apply(kubectl, namespace, webhook_manifest(name, receiver.url(f"/{name}"), [event], retry=retry or PATIENT))
    for name in names:
        wait_ready(kubectl, namespace, name, timeout=60)
    return names


def first_after(receiver: Receiver, moment: float) -> float | None:
    times = [r.at for r in receiver.received() if r.at > moment]
    return min(times) - moment if times else None


# -- short: part of make test ---------------------------------------------------------------------
def test_sigterm_of_the_leader_mid_flight_with_max_retries_0(
    cluster: Cluster, kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    """Attempts in flight at SIGTERM finish and are recorded; with maxRetries 0 none ends Failed, and the
    standby delivers the rest once the Lease is released."""
    events = int(env_number("CHAOS_SIGTERM_EVENTS", 60))
    receiver.script("/hook0", Reply(delay_s=1.0))
    receiver.script("/hook1", Reply(delay_s=1.0))
    retry = {"maxRetries": 0, "backoffSeconds": 1, "maxBackoffSeconds": 5, "timeoutSeconds": 10}
    leader = start_operator(namespace, *KEEP, env=operator_env())
    start_operator(namespace, *KEEP, standby=True, env=operator_env())
    make_webhooks(kubectl, namespace, receiver, 2, retry=retry)

    Publisher(cluster.kubeconfig, namespace, "Order.Created").publish(events)
    receiver.wait_for(10, timeout=60)
    stopped_at = time.time()
    leader.stop(timeout=40)
    stopped_s = time.time() - stopped_at
    assert leader.proc is not None and leader.proc.returncode == 0

    items = wait_settled(cluster.kubeconfig, namespace, events, timeout=180)
    result = tally(items, webhook_uids(cluster.kubeconfig, namespace), [receiver])
    result.line(
        "SIGTERM of the leader mid-flight (maxRetries 0)",
        failed=result.failed_events,
        stop_s=f"{stopped_s:.1f}",
    )
    assert result.lost == 0 and result.stuck == 0
    assert result.failed_events == 0, "an attempt in flight at SIGTERM was recorded as failed"
    assert result.duplicated == 0, "SIGTERM lets attempts in flight finish: nothing is sent twice"


def test_receiver_answering_503_for_a_while(
    cluster: Cluster, kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    outage_s = env_number("CHAOS_503_S", 30 if LONG else 12)
    events = int(env_number("CHAOS_503_EVENTS", 200 if LONG else 60))
    retry = {"maxRetries": 10, "backoffSeconds": 1, "maxBackoffSeconds": 10, "timeoutSeconds": 5}
    start_operator(namespace, *KEEP, env=operator_env())
    make_webhooks(kubectl, namespace, receiver, 2, retry=retry)
    until = time.time() + outage_s
    receiver.rule = lambda path, headers: Reply(status=503) if time.time() < until else None

    Publisher(cluster.kubeconfig, namespace, "Order.Created").publish(events)
    items = wait_settled(cluster.kubeconfig, namespace, events, timeout=outage_s + 180)
    result = tally(items, webhook_uids(cluster.kubeconfig, namespace), [receiver])
    answered_503 = sum(1 for r in receiver.received() if r.status == 503)
    last_ok = max(r.at for r in receiver.received() if r.status == 200)
    result.line(
        f"receiver answering 503 for {outage_s:.0f}s",
        answered_503=answered_503,
        all_delivered_s_after_recovery=f"{last_ok - until:.1f}",
    )
    assert result.lost == 0 and result.stuck == 0 and result.duplicated == 0
    assert answered_503 > 0


# -- long: make chaos -----------------------------------------------------------------------------
@long_only
def test_kill_9_of_the_leader_with_a_standby(
    cluster: Cluster, kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    events = int(env_number("CHAOS_EVENTS", 1000))
    hooks = int(env_number("CHAOS_WEBHOOKS", 5))
    leader = start_operator(namespace, *KEEP, env=operator_env())
    start_operator(namespace, *KEEP, standby=True, env=operator_env())
    make_webhooks(kubectl, namespace, receiver, hooks)

    publisher = Publisher(cluster.kubeconfig, namespace, "Order.Created").start(events)
    receiver.wait_for(events * hooks // 3, timeout=600)
    killed_at = time.time()
    leader.kill()
    publisher.join()
    items = wait_settled(cluster.kubeconfig, namespace, events, timeout=600)
    result = tally(items, webhook_uids(cluster.kubeconfig, namespace), [receiver])
    # Requests the dying leader had sent may reach the receiver just after killed_at; the standby cannot
    # deliver anything before it holds the Lease (seconds later), so later first deliveries are its own.
    late = [wid for wid in result.duplicate_ids if result.first_ok_at[wid] > killed_at + 1.0]
    result.line(
        f"kill -9 of the leader, {events} events x {hooks} webhooks",
        duplicates_first_sent_before_the_kill=len(result.duplicate_ids) - len(late),
        takeover_s=f"{first_after(receiver, killed_at + 0.5) or float('nan'):.1f}",
    )
    assert result.lost == 0 and result.stuck == 0
    entries = {d.get("id"): d for item in items for d in (item.get("status") or {}).get("deliveries") or ()}
    assert not late, f"deliveries first made after the kill were made twice: {[entries.get(w) for w in late]}"
    # What the dying leader had taken up and not recorded: --max-concurrency answered (then it takes up
    # nothing new), 4 x --max-concurrency queued for a slot, --max-concurrency in flight.
    assert result.duplicated <= 6 * MAX_CONCURRENCY, "duplicates beyond the attempts the leader had taken up"


def _api_fault(
    plane: ControlPlane,
    process: str,
    down_s: float,
    cluster: Cluster,
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
) -> None:
    events = int(env_number("CHAOS_API_EVENTS", 400))
    receiver.script("/hook0", Reply(delay_s=0.05))
    operator = start_operator(namespace, *KEEP, env=operator_env())
    standby = start_operator(namespace, *KEEP, standby=True, env=operator_env())
    make_webhooks(kubectl, namespace, receiver, 2)
    Publisher(cluster.kubeconfig, namespace, "Order.Created").publish(events // 2, prefix="before")
    receiver.wait_for(events // 4, timeout=120)
    stopped_at = time.time()
    plane.stop(process)
    time.sleep(down_s)
    plane.start(process)
    restarted_at = time.time()
    Publisher(cluster.kubeconfig, namespace, "Order.Created").publish(events - events // 2, prefix="after")
    items = wait_settled(cluster.kubeconfig, namespace, events, timeout=600)
    result = tally(items, webhook_uids(cluster.kubeconfig, namespace), [receiver])
    resumed = first_after(receiver, restarted_at)
    result.line(
        f"{process} stopped for {down_s:.0f}s mid-run",
        delivering_again_s_after_restart=f"{resumed if resumed is not None else float('nan'):.1f}",
        outage_s=f"{restarted_at - stopped_at:.0f}",
        operator_alive=operator.running and standby.running,
        same_leader_after=leads(operator) and not leads(standby),
    )
    assert operator.running and standby.running, "an operator exited during the outage"
    assert result.lost == 0 and result.stuck == 0
    # A leader that cannot renew its Lease stops within the renew deadline, but the standby could not
    # renew its view of the Lease either: once the API server answers again, the same leader resumes its
    # term before the standby may take over, and records what it had sent instead of anyone repeating it.
    assert leads(operator) and not leads(standby), "the leader of before the outage leads again"
    assert result.duplicated == 0, "deliveries repeated although the same leader resumed its term"


@long_only
def test_kube_apiserver_stopped_and_restarted(
    plane: ControlPlane,
    cluster: Cluster,
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
) -> None:
    down_s = env_number("CHAOS_APISERVER_DOWN_S", 60)
    _api_fault(plane, "kube-apiserver", down_s, cluster, kubectl, namespace, receiver, start_operator)


@long_only
def test_etcd_restarted(
    plane: ControlPlane,
    cluster: Cluster,
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
) -> None:
    down_s = env_number("CHAOS_ETCD_DOWN_S", 10)
    _api_fault(plane, "etcd", down_s, cluster, kubectl, namespace, receiver, start_operator)


@pytest.fixture
def other_namespace(kubectl: KubectlFn, namespace: str) -> Iterator[str]:
    name = f"{namespace[:50]}-b"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@long_only
def test_a_hanging_receiver_in_one_namespace_does_not_slow_another(
    cluster: Cluster,
    kubectl: KubectlFn,
    namespace: str,
    other_namespace: str,
    tls_ca: Any,
    receiver: Receiver,
    start_operator: StartOperator,
) -> None:
    hang_s = env_number("CHAOS_HANG_S", 60)
    slow_events = int(env_number("CHAOS_HANG_SLOW_EVENTS", 500))
    # Twelve hanging webhooks with 10 slots each could hold every one of the 100 global slots.
    slow_hooks = int(env_number("CHAOS_HANG_WEBHOOKS", 12))
    rate = env_number("CHAOS_HANG_FAST_RATE", 20)
    slow = Receiver(tls_ca)
    try:
        until = time.time() + 10_000.0
        # A hanging request is answered (503) only after the operator gave up on it: it never counts as delivered.
        slow.rule = lambda path, headers: (
            Reply(status=503, delay_s=max(0.0, until - time.time())) if time.time() < until else None
        )
        slow_retry = {"maxRetries": 10, "backoffSeconds": 1, "maxBackoffSeconds": 10, "timeoutSeconds": 5}
        start_operator(namespace, "--namespace", other_namespace, *KEEP, env=operator_env())
        make_webhooks(kubectl, other_namespace, slow, slow_hooks, retry=slow_retry, prefix="slow")
        make_webhooks(kubectl, namespace, receiver, 1, prefix="fast")

        until = time.time() + hang_s
        slow_pub = Publisher(cluster.kubeconfig, other_namespace, "Order.Created").start(slow_events, prefix="slow")
        fast_pub = Publisher(cluster.kubeconfig, namespace, "Order.Created").start(int(rate * hang_s), rate=rate)
        fast_pub.join()
        slow_pub.join()
        fast_items = wait_settled(cluster.kubeconfig, namespace, int(rate * hang_s), timeout=300)
        slow_items = wait_settled(cluster.kubeconfig, other_namespace, slow_events, timeout=hang_s + 600)
        fast = tally(fast_items, webhook_uids(cluster.kubeconfig, namespace), [receiver])
        slowed = tally(slow_items, webhook_uids(cluster.kubeconfig, other_namespace), [slow])
        latencies = []
        for request in receiver.received():
            n = json.loads(request.body)["data"]["n"]
            latencies.append(request.at - fast_pub.published[f"ev-{n}"])
        fast.line(
            f"fast namespace while another's receiver hangs {hang_s:.0f}s",
            p99_ms=round(p99(latencies) * 1000),
            p50_ms=round(sorted(latencies)[len(latencies) // 2] * 1000),
            rate_per_s=rate,
        )
        slowed.line(f"the hanging namespace ({slow_events} events x {slow_hooks} webhooks)")
        assert fast.lost == 0 and fast.stuck == 0 and fast.duplicated == 0
        assert slowed.lost == 0 and slowed.stuck == 0
        assert p99(latencies) < 2.0, "the fast namespace waited for the hanging one"
    finally:
        slow.close()


class SilentDns:
    """A DNS server on 127.0.0.99:53 (UDP and TCP) that reads every query and never answers."""

    ADDRESS = "127.0.0.99"

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((self.ADDRESS, 53))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((self.ADDRESS, 53))
        self.tcp.listen(64)
        self.queries = 0
        self._open: list[socket.socket] = []
        threading.Thread(target=self._udp, daemon=True).start()
        threading.Thread(target=self._tcp, daemon=True).start()

    def _udp(self) -> None:
        while True:
            try:
                self.udp.recvfrom(4096)
            except OSError:
                return
            self.queries += 1

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            self._open.append(conn)  # held open, never answered

    def close(self) -> None:
        for sock in (self.udp, self.tcp, *self._open):
            sock.close()


def dns_wrapper(tmp_path: Path) -> list[str]:
    """Run the operator with /etc/resolv.conf naming only the silent server (a private mount namespace)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {SilentDns.ADDRESS}\n")
    script = f'mount --bind {resolv} /etc/resolv.conf && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]


@long_only
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (a private resolv.conf)"
)
def test_2000_webhooks_20_on_hosts_whose_dns_never_answers_at_start_up(
    cluster: Cluster, kubectl: KubectlFn, namespace: str, receiver: Receiver, ca_bundle: Path, tmp_path: Path
) -> None:
    total = int(env_number("CHAOS_DNS_WEBHOOKS", 2000))
    dead = int(env_number("CHAOS_DNS_DEAD", 20))
    dns = SilentDns()
    items: list[dict[str, Any]] = []
    for i in range(total):
        if i < dead:
            url, events = f"https://dead-{i}.chaos.test/hook", ["Dead.Ping"]
        elif i == dead:
            url, events = f"https://localhost:{receiver.port}/live", ["Live.Ping"]
        else:
            url, events = f"https://localhost:{receiver.port}/idle-{i}", ["Idle.Ping"]
        retry = {"maxRetries": 0, "backoffSeconds": 1, "maxBackoffSeconds": 5, "timeoutSeconds": 5}
        items.append(webhook_manifest(f"w{i}", url, events, retry=retry))
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    kubectl("apply", "-n", namespace, "--server-side", "-f", "-", input=manifest)

    args = ["--namespace", namespace, "--leader-election-namespace", namespace, "--ca-bundle", str(ca_bundle)]
    args += ["--allow-cidr", "127.0.0.0/8", *KEEP]
    operator = OperatorProcess(
        cluster.kubeconfig,
        args,
        tmp_path / "operator.log",
        env=operator_env(),
        wrapper=dns_wrapper(tmp_path),
        ready_line="campaigning for Lease",
    )
    started = time.monotonic()
    try:
        operator.start(timeout=120)  # /healthz answers and every webhook is loaded
        unhealthy = 0
        ready_after = None
        while time.monotonic() - started < 600:
            assert operator.running, f"the operator exited:\n{operator.log()[-3000:]}"
            if operator.probe("/healthz") != 200:
                unhealthy += 1
            if operator.probe("/readyz") == 200:
                ready_after = time.monotonic() - started
                break
            time.sleep(0.5)
        assert ready_after is not None, "not ready after 600 s"

        live = int(env_number("CHAOS_DNS_LIVE_EVENTS", 50))
        Publisher(cluster.kubeconfig, namespace, "Dead.Ping").publish(dead, prefix="dead")
        live_pub = Publisher(cluster.kubeconfig, namespace, "Live.Ping")
        live_pub.publish(live, prefix="live")
        settled = wait_settled(cluster.kubeconfig, namespace, dead + live, timeout=300)
        uids = webhook_uids(cluster.kubeconfig, namespace)
        live_items = [e for e in settled if e["spec"]["event"] == "Live.Ping"]
        result = tally(live_items, uids, [receiver], subscribed={"Live.Ping": [f"w{dead}"]})
        result.stuck += sum(
            1
            for e in settled
            if e["spec"]["event"] == "Dead.Ping" and e.get("status", {}).get("phase") not in ("Failed",)
        )
        latencies = [r.at - live_pub.published[f"live-{json.loads(r.body)['data']['n']}"] for r in receiver.received()]
        result.line(
            f"{total} webhooks, {dead} on hosts whose DNS never answers, at start-up",
            ready_s=f"{ready_after:.1f}",
            healthz_failures=unhealthy,
            restarts=0 if operator.running else 1,
            live_p99_ms=round(p99(latencies) * 1000),
            dns_queries=dns.queries,
        )
        assert operator.running and unhealthy == 0
        assert result.lost == 0 and result.stuck == 0 and result.duplicated == 0
        assert p99(latencies) < 5.0, "a live host's deliveries waited for the dead hosts' lookups"
    finally:
        operator.stop()
        dns.close()


@long_only
def test_two_replicas_side_by_side_under_load(
    cluster: Cluster, kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    """Two replicas for CHAOS_SIDE_BY_SIDE_S of load; the leader is rolled (SIGTERM, started again) twice."""
    duration = env_number("CHAOS_SIDE_BY_SIDE_S", 120)
    rate = env_number("CHAOS_SIDE_BY_SIDE_RATE", 20)
    hooks = 3
    replicas = [
        start_operator(namespace, *KEEP, env=operator_env()),
        start_operator(namespace, *KEEP, standby=True, env=operator_env()),
    ]
    make_webhooks(kubectl, namespace, receiver, hooks)
    events = int(rate * duration)
    publisher = Publisher(cluster.kubeconfig, namespace, "Order.Created").start(events, rate=rate)
    handovers = 0
    for moment in (duration / 3, 2 * duration / 3):
        time.sleep(max(0.0, moment - (time.time() - min(publisher.published.values() or [time.time()]))))
        leader = next(r for r in replicas if r.running and r.probe("/readyz") == 200 and _leads(r))
        leader.stop(timeout=40)
        leader.ready_line = "campaigning for Lease"
        leader.start(timeout=60)  # back as the standby
        handovers += 1
    publisher.join(timeout=duration + 600)
    items = wait_settled(cluster.kubeconfig, namespace, events, timeout=600)
    result = tally(items, webhook_uids(cluster.kubeconfig, namespace), [receiver])
    result.line(
        f"two replicas side by side for {duration:.0f}s at {rate:.0f} events/s x {hooks} webhooks",
        handovers=handovers,
    )
    assert result.lost == 0 and result.stuck == 0
    assert result.duplicated == 0, "with graceful hand-overs every delivery is made by exactly one replica"


def _leads(operator: OperatorProcess) -> bool:
    from tests.support.kube_helpers import metric_value

    try:
        return metric_value(operator.metrics(), "webhook_operator_leader") == 1.0
    except OSError:
        return False


@long_only
def test_memory_with_10000_events_waiting_for_a_retry(
    cluster: Cluster, kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    events = int(env_number("CHAOS_RETRY_EVENTS", 10_000))
    data_bytes = int(env_number("CHAOS_RETRY_DATA_BYTES", 2048))
    receiver.rule = lambda path, headers: Reply(status=503)
    retry = {"maxRetries": 10, "backoffSeconds": 600, "maxBackoffSeconds": 86400, "timeoutSeconds": 5}
    operator = start_operator(namespace, *KEEP, env=operator_env())
    make_webhooks(kubectl, namespace, receiver, 1, retry=retry)
    assert operator.proc is not None
    idle = rss_mib(operator.proc.pid)
    Publisher(cluster.kubeconfig, namespace, "Order.Created", data_bytes=data_bytes).publish(events)
    receiver.wait_for(events, timeout=900)
    time.sleep(15)  # the last status writes
    items = wait_settled(cluster.kubeconfig, namespace, events, timeout=0)
    waiting = sum(1 for e in items if (e.get("status") or {}).get("phase") == "Delivering")
    backlog = rss_mib(operator.proc.pid)
    text = (
        f"[chaos] {events} events ({data_bytes} B of data) waiting for a retry: rss_idle_mib={idle:.0f} "
        f"rss_backlog_mib={backlog:.0f} waiting={waiting} tree={os.environ.get('CHAOS_OPERATOR_PYTHONPATH', 'this')}"
    )
    record(text)
    assert waiting == events
