"""``spec.ordering: Ordered``: which delivery of a webhook may be attempted next (pure).

Every open delivery (not yet Succeeded or Failed) of every webhook is registered under its event's
order key, ``(creationTimestamp, namespace, name)``: creation time to the second as the API server
stamps it, then the event's name, so two events of the same second have one fixed order that every
replica and every restart computes alike. With ``Ordered`` a delivery may be attempted only while it
is the first open delivery of its webhook and no other attempt to that webhook is under way; a
retrying head therefore blocks the deliveries behind it until it is final.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

OrderKey = tuple[str, str, str]  # (creationTimestamp "YYYY-MM-DDTHH:MM:SSZ", namespace, name)
WebhookKey = tuple[str, str, str]  # (namespace, name, uid)


def order_key(creation_timestamp: str, namespace: str, name: str) -> OrderKey:
    return (creation_timestamp, namespace, name)


class OrderingGate:
    def __init__(self) -> None:
        self._open: dict[WebhookKey, list[OrderKey]] = defaultdict(list)
        self._attempting: dict[WebhookKey, int] = defaultdict(int)

    def add(self, webhook: WebhookKey, key: OrderKey) -> None:
        keys = self._open[webhook]
        at = bisect.bisect_left(keys, key)
        if at == len(keys) or keys[at] != key:
            keys.insert(at, key)

    def remove(self, webhook: WebhookKey, key: OrderKey) -> None:
        keys = self._open.get(webhook)
        if not keys:
            return
        at = bisect.bisect_left(keys, key)
        if at < len(keys) and keys[at] == key:
            del keys[at]
        if not keys:
            del self._open[webhook]

    def may_attempt(self, webhook: WebhookKey, key: OrderKey) -> bool:
        """Whether this delivery is its webhook's head and nothing else is being sent to it."""
        keys = self._open.get(webhook)
        return keys is not None and keys[0] == key and self._attempting.get(webhook, 0) == 0

    def head(self, webhook: WebhookKey) -> OrderKey | None:
        keys = self._open.get(webhook)
        return keys[0] if keys else None

    def position(self, webhook: WebhookKey, key: OrderKey) -> int:
        """How many open deliveries of the webhook come before ``key``."""
        return bisect.bisect_left(self._open.get(webhook, ()), key)

    def first(self, webhook: WebhookKey, count: int) -> list[OrderKey]:
        return self._open.get(webhook, [])[:count]

    def blocked(self, webhook: WebhookKey) -> int:
        """Open deliveries behind the head."""
        return max(0, len(self._open.get(webhook, ())) - 1)

    def attempt_started(self, webhook: WebhookKey) -> None:
        self._attempting[webhook] += 1

    def attempt_ended(self, webhook: WebhookKey) -> None:
        self._attempting[webhook] -= 1
        if self._attempting[webhook] <= 0:
            del self._attempting[webhook]


class ParkedInOrder:
    """Ordered deliveries far back in their webhook's order, waiting outside memory. Their key stays in
    the gate (they keep their place); the event's uid is kept here to read it again once its place is
    near the head, or when the webhook is no longer Ordered."""

    def __init__(self) -> None:
        self._by_webhook: dict[WebhookKey, dict[OrderKey, str]] = {}
        self._of_uid: dict[str, list[tuple[WebhookKey, OrderKey]]] = {}

    def __len__(self) -> int:
        return len(self._of_uid)

    def add(self, uid: str, webhook: WebhookKey, key: OrderKey) -> None:
        self._by_webhook.setdefault(webhook, {})[key] = uid
        places = self._of_uid.setdefault(uid, [])
        if (webhook, key) not in places:
            places.append((webhook, key))

    def holds(self, webhook: WebhookKey) -> bool:
        return webhook in self._by_webhook

    def uid_at(self, webhook: WebhookKey, key: OrderKey) -> str | None:
        return self._by_webhook.get(webhook, {}).get(key)

    def uids_of(self, webhook: WebhookKey) -> list[str]:
        return list(dict.fromkeys(self._by_webhook.get(webhook, {}).values()))

    def webhooks(self) -> list[WebhookKey]:
        return list(self._by_webhook)

    def pop(self, uid: str) -> list[tuple[WebhookKey, OrderKey]]:
        """Forget ``uid``'s places; the caller decides whether their keys leave the gate."""
        places = self._of_uid.pop(uid, [])
        for webhook, key in places:
            keys = self._by_webhook.get(webhook)
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self._by_webhook[webhook]
        return places
