"""The WebhookEvent watch loop against the real API server: paginated list, changes, expiry, backpressure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.support.kube_helpers import KubectlFn, create, event_manifest
from webhook_operator.kube import KubeClient, resource_path
from webhook_operator.kubeconfig import from_kubeconfig
from webhook_operator.watch import Gone, ResourceWatch

pytestmark = pytest.mark.integration

Seen = list[tuple[str | None, str]]


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[KubeClient]:
    client = KubeClient(from_kubeconfig([cluster.kubeconfig]))
    yield client
    await client.close()


def recorder(seen: Seen) -> Any:
    async def handle(kind: str | None, obj: dict[str, Any]) -> None:
        seen.append((kind, obj["metadata"]["name"]))

    return handle


async def wait_for(predicate: Any, within_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_lists_in_pages_then_streams_additions_changes_and_deletions(
    kube: KubeClient, kubectl: KubectlFn, namespace: str
) -> None:
    existing = {create(kubectl, namespace, event_manifest("User.Created", {"i": i})) for i in range(7)}
    seen: Seen = []
    watch = ResourceWatch(kube, resource_path("webhookevents", namespace), recorder(seen), page_size=3)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.listed.wait(), 15)
        assert sorted(seen) == sorted((None, name) for name in existing)
        assert kube.requests >= 3  # 7 items at 3 a page

        name = await asyncio.to_thread(create, kubectl, namespace, event_manifest("User.Created"))
        await wait_for(lambda: ("ADDED", name) in seen)
        patch = json.dumps({"metadata": {"labels": {"touched": "yes"}}})
        await asyncio.to_thread(kubectl, "-n", namespace, "patch", "whe", name, "--type=merge", "-p", patch)
        await wait_for(lambda: ("MODIFIED", name) in seen)
        await asyncio.to_thread(kubectl, "-n", namespace, "delete", "whe", name)
        await wait_for(lambda: ("DELETED", name) in seen)
        assert watch.lists == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_compacted_resource_version_is_gone(kube: KubeClient, namespace: str) -> None:
    watch = ResourceWatch(kube, resource_path("webhookevents", namespace), recorder([]))
    with pytest.raises(Gone):
        await asyncio.wait_for(watch._watch("1"), 15)


async def test_a_stream_that_ends_resumes_where_it_stopped_without_listing_again(
    kube: KubeClient, kubectl: KubectlFn, namespace: str
) -> None:
    seen: Seen = []
    watch = ResourceWatch(kube, resource_path("webhookevents", namespace), recorder(seen), watch_timeout_s=1)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(watch.listed.wait(), 15)
        await wait_for(lambda: watch.watches >= 3)  # streams of one second each
        name = await asyncio.to_thread(create, kubectl, namespace, event_manifest("User.Created"))
        await wait_for(lambda: ("ADDED", name) in seen)
        assert watch.lists == 1 and seen == [("ADDED", name)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_nothing_is_handed_over_while_the_consumer_has_no_capacity(
    kube: KubeClient, kubectl: KubectlFn, namespace: str
) -> None:
    existing = {create(kubectl, namespace, event_manifest("User.Created")) for _ in range(4)}
    seen: Seen = []
    open_ = asyncio.Event()

    async def capacity() -> None:
        await open_.wait()

    watch = ResourceWatch(
        kube, resource_path("webhookevents", namespace), recorder(seen), capacity=capacity, page_size=2
    )
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(1.0)
        assert seen == [] and not watch.listed.is_set()
        open_.set()
        await asyncio.wait_for(watch.listed.wait(), 15)
        assert {name for _, name in seen} == existing
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_handler_does_not_end_the_watch(kube: KubeClient, kubectl: KubectlFn, namespace: str) -> None:
    name = create(kubectl, namespace, event_manifest("User.Created"))
    seen: Seen = []
    failures = [RuntimeError("a bug")]

    async def handle(kind: str | None, obj: dict[str, Any]) -> None:
        if failures:
            raise failures.pop()
        seen.append((kind, obj["metadata"]["name"]))

    watch = ResourceWatch(kube, resource_path("webhookevents", namespace), handle)
    task = asyncio.create_task(watch.run())
    try:
        await wait_for(lambda: (None, name) in seen)
        assert watch.lists == 2  # listed again after the failure
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
