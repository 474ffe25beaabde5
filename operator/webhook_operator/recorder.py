"""Kubernetes Events about Webhooks and WebhookEvents (core/v1, as kubectl describe shows them)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from webhook_operator import GROUP, VERSION
from webhook_operator.identity import instance_name
from webhook_operator.kube import ApiError, KubeClient, resource_path
from webhook_operator.model import format_time, now

log = logging.getLogger(__name__)
COMPONENT = "webhook-operator"


def event_body(
    obj: Mapping[str, Any], *, type_: str, reason: str, message: str, instance: str | None = None
) -> dict[str, Any]:
    """A core/v1 Event about ``obj``, naming this pod as the reporting instance and source host."""
    meta = obj["metadata"]
    stamp = format_time(now())
    instance = instance or instance_name()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": obj.get("kind", ""),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT, "host": instance},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def record(kube: KubeClient, obj: Mapping[str, Any], *, type_: str, reason: str, message: str) -> None:
    """Post one Event; failures to post are logged and otherwise ignored."""
    meta = obj["metadata"]
    event = event_body(obj, type_=type_, reason=reason, message=message)
    try:
        await kube.create(resource_path("events", meta["namespace"], group="", version="v1"), event)
    except (ApiError, OSError) as exc:
        log.warning("could not post Event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], exc)
