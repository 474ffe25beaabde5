"""`--event-ttl`: completed WebhookEvents are the 24h request log and are deleted once their TTL has passed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    Manifest,
    apply,
    create,
    event_manifest,
    get_or_none,
    send_event,
    verify_received,
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


def add_webhook(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    name: str = "hook",
    events: tuple[str, ...] = ("User.Created",),
) -> None:
    apply(kubectl, namespace, webhook_manifest(name, receiver.url(f"/{name}"), list(events)))
    wait_ready(kubectl, namespace, name)


def completion(event: Manifest) -> float:
    completed = parse_time(event["status"]["completionTime"])
    assert completed is not None
    return completed.timestamp()


def wait_gone(kubectl: KubectlFn, namespace: str, name: str, timeout: float = 20.0) -> float:
    """When the event was first seen to be gone."""
    wait_until(
        lambda: get_or_none(kubectl, namespace, f"webhookevent/{name}") is None,
        timeout=timeout,
        interval=0.1,
        what=f"webhookevent/{name} to be deleted",
    )
    return time.time()


def test_completed_events_are_deleted_once_the_event_ttl_has_passed(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--event-ttl", "2s")
    receiver.script("/broken", Reply(400))
    add_webhook(kubectl, namespace, receiver)
    add_webhook(kubectl, namespace, receiver, "broken", ("User.Deleted",))

    for event_name, phase in [("User.Created", "Delivered"), ("User.Deleted", "Failed"), ("Ping", "NoSubscribers")]:
        name = create(kubectl, namespace, event_manifest(event_name))
        final = wait_event_final(kubectl, namespace, name)
        seen_final = time.time()
        gone = wait_gone(kubectl, namespace, name)

        assert final["status"]["phase"] == phase
        # completionTime has whole seconds, so it is up to 1 s earlier than the operator's own clock.
        lived = gone - completion(final)
        assert 1.9 <= lived <= 6.0, f"{phase} event deleted {lived:.1f}s after completionTime"
        assert gone - seen_final >= 0.5, f"{phase} event deleted too soon after completion"


def test_completed_events_found_at_startup_are_deleted_by_their_completion_time(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    keeping = start_operator(namespace, "--event-ttl", "0")
    add_webhook(kubectl, namespace, receiver)
    event = send_event(kubectl, namespace, "User.Created")
    keeping.stop()
    wait_until(lambda: time.time() > completion(event) + 2.5, what="the TTL to pass while no operator runs")

    start_operator(namespace, "--event-ttl", "2s")

    wait_gone(kubectl, namespace, event["metadata"]["name"], timeout=15)


def test_event_ttl_0_keeps_completed_events(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--event-ttl", "0")
    add_webhook(kubectl, namespace, receiver)

    event = send_event(kubectl, namespace, "User.Created")
    # Longer than the 2 s TTL that the tests above see honoured within about a second.
    time.sleep(4)

    kept = get_or_none(kubectl, namespace, f"webhookevent/{event['metadata']['name']}")
    assert kept is not None and kept["status"]["phase"] == "Delivered"
