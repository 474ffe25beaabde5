"""An operator killed with SIGKILL resumes from what WebhookEvent status records; and what a delivery costs the API.

Delivery is at-least-once: a request in flight when the operator dies is sent again, with the same
webhook-id, so receivers can dedupe.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    FINAL_PHASES,
    KubectlFn,
    Manifest,
    apply,
    create,
    event_manifest,
    get,
    metric_samples,
    signing_keys,
    verify_received,
    verify_signatures,
    wait_event_final,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.receiver import Receiver, Reply
from webhook_operator.model import parse_time

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def every_request_is_signed(kubectl: KubectlFn, namespace: str, receiver: Receiver) -> Iterator[None]:
    """Whatever a test checks, every request its receiver got must verify as a receiver verifies it."""
    yield
    verify_received(kubectl, namespace, receiver.received())


BURST = 20


def add_webhook(kubectl: KubectlFn, namespace: str, receiver: Receiver, **retry: float) -> None:
    policy = {"maxRetries": 3, "backoffSeconds": 0.1, "maxBackoffSeconds": 1, "timeoutSeconds": 10, **retry}
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/hook"), ["User.*"], retry=policy))
    wait_ready(kubectl, namespace, "hook")


def only_entry(event: Manifest) -> dict[str, Any]:
    (entry,) = event["status"]["deliveries"]
    return dict(entry)


@dataclass(frozen=True)
class WatchLine:
    at: float
    type: str
    name: str
    uid: str
    resource_version: str
    phase: str


class EventWatch:
    """`kubectl get webhookevents --watch` in the background: every write to every event, with arrival times."""

    def __init__(self, env: dict[str, str], namespace: str) -> None:
        template = (
            "{.type} {.object.metadata.name} {.object.metadata.uid} "
            '{.object.metadata.resourceVersion} {.object.status.phase}{"\\n"}'
        )
        self.lines: list[WatchLine] = []
        self._proc = subprocess.Popen(
            [
                *("kubectl", "get", "webhookevents", "-n", namespace),
                *("--watch", "--output-watch-events", "-o", f"jsonpath={template}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            parts = raw.split()
            if len(parts) >= 4:
                phase = parts[4] if len(parts) > 4 else ""
                self.lines.append(WatchLine(time.time(), parts[0], parts[1], parts[2], parts[3], phase))

    def seen(self, name: str) -> list[WatchLine]:
        return [line for line in list(self.lines) if line.name == name]

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self._thread.join(10)


@pytest.fixture
def event_watch(kube_env: dict[str, str], namespace: str) -> Iterator[EventWatch]:
    watch = EventWatch(kube_env, namespace)
    yield watch
    watch.stop()


def apiserver_requests(kubectl: KubectlFn) -> Counter[str]:
    """The API server's own count of requests to webhook-operator.io resources, by verb and resource."""
    text = kubectl("get", "--raw", "/metrics").stdout
    counts: Counter[str] = Counter()
    for labels, value in metric_samples(text, "apiserver_request_total"):
        if labels.get("group") == "webhook-operator.io" and labels.get("verb") not in ("WATCH", "LIST"):
            resource = labels["resource"] + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            counts[f"{labels['verb']} {resource}"] += int(value)
    return counts


# -- SIGKILL at each point of a delivery ----------------------------------------------------
def test_events_created_while_the_operator_is_down_are_delivered_after_it_starts(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    add_webhook(kubectl, namespace, receiver)
    operator.kill()

    names = [create(kubectl, namespace, event_manifest("User.Created", {"n": i})) for i in range(5)]
    assert all(not get(kubectl, namespace, f"webhookevent/{n}").get("status") for n in names)
    operator.start()

    events = [wait_event_final(kubectl, namespace, n) for n in names]
    assert [e["status"]["phase"] for e in events] == ["Delivered"] * 5
    requests = receiver.wait_for(5, "/hook")
    assert sorted(r.headers["webhook-id"] for r in requests) == sorted(only_entry(e)["id"] for e in events)
    assert len(requests) == 5


def test_killed_between_retries_resumes_with_the_same_id_and_attempt_count(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/hook", Reply(503, b"busy"), Reply(200))
    # The retry is due 2..4 s after the first attempt: time enough to kill the operator in between.
    add_webhook(kubectl, namespace, receiver, backoffSeconds=4, maxBackoffSeconds=4)
    key, standard_secret = signing_keys(kubectl, namespace, "hook")
    name = create(kubectl, namespace, event_manifest("User.Created"))

    def retrying() -> Manifest | None:
        obj = get(kubectl, namespace, f"webhookevent/{name}")
        entries = (obj.get("status") or {}).get("deliveries") or []
        return obj if entries and entries[0].get("outcome") == "Retrying" else None

    recorded = only_entry(wait_until(retrying, what="the first attempt to be recorded as Retrying"))
    operator.kill()
    assert recorded["attempts"] == 1 and recorded["statusCode"] == 503
    assert len(receiver.received("/hook")) == 1, "the retry went out before the kill; the backoff is too short"
    operator.start()

    event = wait_event_final(kubectl, namespace, name)
    entry = only_entry(event)
    assert event["status"]["phase"] == "Delivered"
    assert entry["outcome"] == "Succeeded" and entry["attempts"] == 2
    assert entry["id"] == recorded["id"] and entry["firstAttemptTime"] == recorded["firstAttemptTime"]
    first, second = receiver.received("/hook")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == entry["id"]
    due = parse_time(recorded["nextAttemptTime"])
    assert due is not None and second.at >= due.timestamp() - 0.05, "the restarted operator ignored the backoff"
    for request in (first, second):
        verify_signatures(request.body, request.headers, key, standard_secret)


def test_killed_with_a_request_in_flight_sends_it_again_with_the_same_id(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    # The receiver holds its 200 for 3 s: the operator dies after sending, before it can record anything.
    receiver.script("/hook", Reply(200, delay_s=3), Reply(200))
    add_webhook(kubectl, namespace, receiver)
    name = create(kubectl, namespace, event_manifest("User.Created", {"id": "u1"}))

    receiver.wait_for(1, "/hook")
    operator.kill()
    assert (get(kubectl, namespace, f"webhookevent/{name}").get("status") or {}).get("phase") not in FINAL_PHASES
    operator.start()

    event = wait_event_final(kubectl, namespace, name)
    assert event["status"]["phase"] == "Delivered"
    first, second = receiver.wait_for(2, "/hook")
    entry = only_entry(event)
    # At least once: the receiver saw the id twice and dedupes on it.
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == entry["id"]
    assert first.body == second.body
    # The unrecorded attempt is not in status: the record starts from what the API holds.
    assert entry["outcome"] == "Succeeded" and entry["attempts"] == 1


# -- what a delivery costs -------------------------------------------------------------------
def test_a_first_attempt_success_costs_one_status_write_per_event(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    event_watch: EventWatch,
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver)
    # The watch is established once it reports an event created after it started.
    create(kubectl, namespace, event_manifest("Ping", name="watch-established"))
    wait_until(lambda: event_watch.seen("watch-established"), what="the event watch to start")
    wait_event_final(kubectl, namespace, "watch-established")
    before = apiserver_requests(kubectl)

    items = [event_manifest("User.Created", {"n": i}) for i in range(BURST)]
    burst = {"apiVersion": "v1", "kind": "List", "items": items}
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(burst))
    requests = receiver.wait_for(BURST, "/hook", timeout=60)

    def all_final() -> list[Manifest] | None:
        items = json.loads(kubectl("get", "webhookevents", "-n", namespace, "-o", "json").stdout)["items"]
        ours = [i for i in items if i["spec"]["event"] == "User.Created"]
        done = all((i.get("status") or {}).get("phase") in FINAL_PHASES for i in ours)
        return ours if len(ours) == BURST and done else None

    events = wait_until(all_final, timeout=60, what=f"all {BURST} events to be final")
    after = apiserver_requests(kubectl)
    wait_until(
        lambda: sum(1 for line in event_watch.lines if line.type == "MODIFIED") >= BURST + 1,
        what="the watch to report every status write",
    )

    assert [e["status"]["phase"] for e in events] == ["Delivered"] * BURST
    assert len(requests) == BURST
    writes: dict[str, int] = defaultdict(int)
    added: dict[str, float] = {}
    for line in event_watch.lines:
        if line.type == "MODIFIED":
            writes[line.name] += 1
        elif line.type == "ADDED":
            added[line.uid] = line.at
    assert {e["metadata"]["name"]: writes[e["metadata"]["name"]] for e in events} == {
        e["metadata"]["name"]: 1 for e in events
    }

    latencies = [r.at - added[json.loads(r.body)["eventId"]] for r in requests]
    delta = after - before
    writes_per_event = sum(writes[e["metadata"]["name"]] for e in events) / BURST
    print(
        f"\n{BURST} events, one webhook: status writes per event {writes_per_event:.2f}"
        f"; event -> receipt latency median {statistics.median(latencies) * 1000:.0f} ms,"
        f" max {max(latencies) * 1000:.0f} ms (from the event's ADDED watch notification)"
        f"\napiserver_request_total delta for webhook-operator.io during the burst (cluster-wide, includes"
        f" the {BURST} creates): {dict(sorted(delta.items()))}"
        f"; PATCH webhookevents/status per event: {delta['PATCH webhookevents/status'] / BURST:.2f}"
    )
    assert delta["PATCH webhookevents/status"] >= BURST
