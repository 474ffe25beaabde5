"""The in-memory index of webhooks, kept current by watches, that every event is matched against."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from webhook_operator.delivery.transport import TLSMaterial
from webhook_operator.filter import CompiledFilter, FilterError
from webhook_operator.health import HealthWindow
from webhook_operator.matching import subscribes
from webhook_operator.model import WebhookSpec
from webhook_operator.policy import ParsedURL

Key = tuple[str, str]  # (namespace, name)


@dataclass
class WebhookState:
    """What the delivery path needs of one webhook, resolved once per reconcile, never per event."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: WebhookSpec
    body: dict[str, Any]
    ready: bool = False
    url: ParsedURL | None = None
    keys: tuple[str, ...] = ()  # current signing key first, then keys still in their rotation overlap
    headers: tuple[tuple[str, str], ...] = ()  # resolved custom headers, Secret values included
    secret_refs: frozenset[str] = frozenset()  # Secrets in the namespace this webhook reads
    # resourceVersion of each Secret as the last reconcile read it (None: missing)
    secret_versions: dict[str, str | None] = field(default_factory=dict)
    health: HealthWindow = field(default_factory=HealthWindow)
    health_dirty: bool = False
    fingerprint: tuple[Any, ...] = ()
    limiter: asyncio.Semaphore | None = None
    # Known but never reconciled yet (its first reconcile met an API error): events are matched to it
    # and their deliveries wait until it is resolved, rather than finding no webhook.
    resolving: bool = False
    tls: TLSMaterial | None = None  # spec.tls resolved from its Secrets
    filter: CompiledFilter | None = None  # spec.filter, compiled for this generation
    # status.autoDisable as last decided (failingSince; disabledAt, reason... while suspended)
    auto_disable: dict[str, Any] = field(default_factory=dict)
    auto_disable_dirty: bool = False

    @property
    def suspended(self) -> bool:
        """Auto-disabled (a 410, or failing for too long): no events are sent until resumed."""
        return bool(self.auto_disable.get("disabledAt"))

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def hook_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def deliverable(self) -> bool:
        return self.ready and self.spec.enabled and self.url is not None and bool(self.keys)


# Called for a webhook whose filter passed over an event (error None) or could not tell (error).
FilterCallback = Callable[[WebhookState, str | None], None]


class WebhookIndex:
    """Webhooks by namespace and name, plus which Secrets each one reads."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[str, WebhookState]] = {}
        self.on_filtered_out: FilterCallback = lambda state, error: None

    def get(self, namespace: str, name: str) -> WebhookState | None:
        return self._by_namespace.get(namespace, {}).get(name)

    def put(self, state: WebhookState) -> None:
        self._by_namespace.setdefault(state.namespace, {})[state.name] = state

    def remove(self, namespace: str, name: str) -> WebhookState | None:
        states = self._by_namespace.get(namespace, {})
        state = states.pop(name, None)
        if not states:
            self._by_namespace.pop(namespace, None)
        return state

    def __iter__(self) -> Iterator[WebhookState]:
        for states in list(self._by_namespace.values()):
            yield from list(states.values())

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_namespace.values())

    def subscribers(self, namespace: str, event: str, payload: dict[str, Any] | None = None) -> list[WebhookState]:
        """The enabled, Ready, not suspended webhooks of ``namespace`` subscribed to ``event`` whose
        ``spec.filter`` passes ``payload`` (see filter.filter_input), by name; and enabled ones still
        being resolved after an API error: their deliveries wait for them."""
        states = self._by_namespace.get(namespace, {})
        return [
            s
            for _, s in sorted(states.items())
            if (s.deliverable or (s.resolving and s.spec.enabled))
            and not s.suspended
            and subscribes(s.spec.events, event)
            and self._passes(s, payload)
        ]

    def _passes(self, state: WebhookState, payload: dict[str, Any] | None) -> bool:
        if state.filter is None or payload is None:
            return True
        try:
            passed = state.filter.evaluate(payload)
        except FilterError as exc:  # a runtime error counts as not matching
            self.on_filtered_out(state, str(exc))
            return False
        if not passed:
            self.on_filtered_out(state, None)
        return passed

    def readers_of_secret(self, namespace: str, secret: str) -> list[WebhookState]:
        return [s for s in self._by_namespace.get(namespace, {}).values() if secret in s.secret_refs]
