"""The ingress's sink in bus mode: one JetStream publication per event, de-duplicated by its id."""

from __future__ import annotations

import json
import uuid
from typing import Any

from webhook_operator.bus.messages import MSG_ID_HEADER, events_subject
from webhook_operator.bus.worker import BusWorker
from webhook_operator.ingress.sink import SinkUnavailable

PUBLISH_TIMEOUT_S = 5.0


class NatsEventSink:
    def __init__(self, worker: BusWorker) -> None:
        self.worker = worker

    async def publish(self, namespace: str, event: str, data: Any, event_id: str | None) -> str:
        js = self.worker.js
        if js is None or not self.worker.connected():
            raise SinkUnavailable("the event bus is not connected", retry_after_s=2)
        # Without a client id one is made here: the eventId answered is the one delivered.
        event_id = event_id or str(uuid.uuid4())
        payload = json.dumps({"event": event, "data": data}, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            await js.publish(
                events_subject(namespace), payload, timeout=PUBLISH_TIMEOUT_S, headers={MSG_ID_HEADER: event_id}
            )
        except Exception as exc:  # timeout, no stream answering, stream full (discard new), disconnected
            raise SinkUnavailable(f"the event bus did not store the event ({exc.__class__.__name__})", 1) from None
        return event_id
