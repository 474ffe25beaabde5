"""Which redelivery an event asks for (pure): the SPEC's redeliver annotation, or a webhook's replay.

``webhook-operator.io/redeliver-requested-at``: every Failed delivery of the event starts over.
``webhook-operator.io/replay-requested-at`` = ``"<requestedAt> <webhook> all|failed"`` (written by
``kubectl webhooks replay``): only that webhook's delivery starts over, whether it Succeeded or
Failed (``all``) or only if it Failed (``failed``). Either keeps the delivery's ``webhook-id``. The
value handled is recorded in ``status.redelivery.requestedAt`` / ``status.replay.requestedAt``, so a
request is answered once, across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook_operator.model import REDELIVER_ANNOTATION, REPLAY_ANNOTATION

REDELIVER = "redelivery"
REPLAY = "replay"


@dataclass(frozen=True)
class Request:
    kind: str  # REDELIVER or REPLAY: also the status field that records it
    value: str  # the annotation value
    webhook: str | None = None  # REPLAY: the one webhook
    failed_only: bool = True

    def selects(self, entry: Mapping[str, Any]) -> bool:
        """Whether this delivery entry starts over."""
        outcome = entry.get("outcome")
        if self.kind == REDELIVER:
            return outcome == "Failed"
        if entry.get("webhook") != self.webhook:
            return False
        return outcome == "Failed" or (outcome == "Succeeded" and not self.failed_only)


def replay_value(requested_at: str, webhook: str, *, failed_only: bool) -> str:
    return f"{requested_at} {webhook} {'failed' if failed_only else 'all'}"


def parse_replay(value: str) -> Request | None:
    parts = value.split()
    if len(parts) != 3 or parts[2] not in ("all", "failed"):
        return None
    return Request(REPLAY, value, webhook=parts[1], failed_only=parts[2] == "failed")


def pending_request(
    meta: Mapping[str, Any], status: Mapping[str, Any], handled: Iterable[str | None] = ()
) -> Request | None:
    """The redelivery the event asks for and nobody has answered yet (a redeliver first), if any."""
    annotations = meta.get("annotations") or {}
    seen = set(handled)
    redeliver = annotations.get(REDELIVER_ANNOTATION)
    if redeliver and redeliver != (status.get(REDELIVER) or {}).get("requestedAt") and redeliver not in seen:
        return Request(REDELIVER, str(redeliver))
    replay = annotations.get(REPLAY_ANNOTATION)
    if replay and replay != (status.get(REPLAY) or {}).get("requestedAt") and replay not in seen:
        return parse_replay(str(replay))
    return None
