"""Reconciling Webhooks: checks, signing keys, the index entry, status, health writes and actions.

Only ``status`` of a Webhook is ever written, so GitOps tools see no drift. Every replica keeps
the index warm; only the leader writes (``is_leader``): a standby notes what it would have
written and the leader reconciles those webhooks again when it takes over.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from webhook_operator import GROUP, VERSION
from webhook_operator.apiretry import backoff_delay, retry_after_of, with_retries
from webhook_operator.health import HealthWindow, healthy_condition
from webhook_operator.index import Key, WebhookIndex, WebhookState
from webhook_operator.kube import ApiError, KubeClient, resource_path
from webhook_operator.matching import sample_event_for
from webhook_operator.metrics import Metrics
from webhook_operator.model import (
    MANAGED_BY_LABEL,
    ROTATE_ANNOTATION,
    TEST_ANNOTATION,
    format_time,
    now,
    parse_webhook_spec,
    signing_secret_name,
    slim_body,
)
from webhook_operator.policy import (
    BlockedDestination,
    PolicyViolation,
    Resolver,
    allowed_addresses,
    parse_url,
    system_resolve,
)
from webhook_operator.recorder import record
from webhook_operator.secrets import (
    Problem,
    ensure_signing_keys,
    resolve_headers,
    rotate_signing_key,
    secret_refs,
)
from webhook_operator.settings import Settings
from webhook_operator.status import condition, merge_conditions, webhook_conditions, without_volatile

log = logging.getLogger(__name__)
HEALTH_RESYNC_S = 60.0
# Webhooks reconciled at once at start-up and take-over (each may wait on DNS and a few API calls).
RECONCILE_CONCURRENCY = 16

TestSender = Callable[[WebhookState, str], Awaitable[dict[str, Any]]]


def webhook_path(namespace: str, name: str, subresource: str | None = None) -> str:
    return resource_path("webhooks", namespace, name, subresource=subresource)


class WebhookController:
    def __init__(self, settings: Settings, kube: KubeClient, index: WebhookIndex, metrics: Metrics) -> None:
        self.settings = settings
        self.kube = kube
        self.index = index
        self.metrics = metrics
        self.send_test: TestSender | None = None
        self._locks: dict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tests_running: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health_written: dict[Key, dict[str, Any]] = {}
        self._failures: dict[Key, int] = {}  # reconciles in a row that met an API error
        self.is_leader: Callable[[], bool] = lambda: True
        self.resolve: Resolver = system_resolve  # the runtime shares its bounded HostResolver here
        self._deferred: set[Key] = set()  # reconciled on a standby with a write left undone

    # -- watch entry points -------------------------------------------------------------
    async def on_event(self, type_: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        if type_ == "DELETED":
            self.forget(meta.get("namespace", ""), meta.get("name", ""))
            return
        await self.reconcile(body)

    async def on_secret_event(self, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        for state in self.index.readers_of_secret(namespace, name):
            await self.reconcile(state.body, force=True)

    def forget(self, namespace: str, name: str) -> None:
        self._deferred.discard((namespace, name))
        self.index.remove(namespace, name)
        self.metrics.remove_webhook(namespace, name)
        self._health_written.pop((namespace, name), None)
        self._failures.pop((namespace, name), None)
        timer = self._timers.pop((namespace, name), None)
        if timer:
            timer.cancel()

    # -- reconcile ----------------------------------------------------------------------
    async def reconcile_all(self, bodies: list[dict[str, Any]]) -> None:
        """Reconcile many webhooks, RECONCILE_CONCURRENCY at a time."""
        slots = asyncio.Semaphore(RECONCILE_CONCURRENCY)

        async def one(body: dict[str, Any]) -> None:
            async with slots:
                await self.reconcile(body, force=True)

        await asyncio.gather(*(one(body) for body in bodies))

    async def reconcile_deferred(self) -> None:
        """On taking the lead: make the writes a standby left undone (missing keys, status, actions)."""
        keys, self._deferred = self._deferred, set()
        bodies = [state.body for key in keys if (state := self.index.get(*key)) is not None]
        if bodies:
            log.info("reconciling %d webhook(s) with writes left undone while standing by", len(bodies))
        await self.reconcile_all(bodies)

    async def reconcile(self, body: dict[str, Any], *, force: bool = False) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        async with self._locks[key]:
            try:
                await self._reconcile(body, force=force)
            except (ApiError, OSError) as exc:
                # Never final: the webhook keeps its place in the index (as it was, or as known but not
                # yet resolved) and is reconciled again after a backoff.
                self._keep_known(body)
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = backoff_delay(failures, retry_after=retry_after_of(exc))
                log.warning("reconciling webhook %s/%s failed, retrying in %.1fs: %s", *key, delay, exc)
                self._schedule(key, delay)
            else:
                self._failures.pop(key, None)

    def _keep_known(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        state = self.index.get(meta["namespace"], meta["name"])
        if state is not None and state.uid == meta["uid"]:
            return
        state = self._new_state(body)
        state.resolving = True
        self.index.put(state)
        self.metrics.webhook_state(state.namespace, state.name, enabled=state.spec.enabled, ready=False)

    def _new_state(self, body: dict[str, Any]) -> WebhookState:
        meta = body["metadata"]
        return WebhookState(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            spec=parse_webhook_spec(body.get("spec") or {}),
            body=slim_body(body),
            health=HealthWindow.from_status((body.get("status") or {}).get("health")),
            limiter=asyncio.Semaphore(self.settings.per_webhook_concurrency),
        )

    async def _reconcile(self, body: dict[str, Any], *, force: bool) -> None:
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        annotations = meta.get("annotations") or {}
        status = body.get("status") or {}
        fingerprint = (
            uid,
            meta.get("generation"),
            annotations.get(TEST_ANNOTATION),
            annotations.get(ROTATE_ANNOTATION),
        )
        leading = self.is_leader()
        state = self.index.get(namespace, name)
        if not leading and state is not None and state.uid == uid:
            # The leader's health writes are the truth until this replica takes over.
            self._follow_health(state, status)
        # A standby may hold no keys yet (the leader had not created the Secret): no shortcut then.
        unchanged = state is not None and state.uid == uid and state.fingerprint == fingerprint
        if unchanged and state is not None and state.ready and state.keys and not force:
            state.body = slim_body(body)
            return
        if state is None or state.uid != uid:
            state = self._new_state(body)
        spec = parse_webhook_spec(body.get("spec") or {})
        current = now()
        problems: list[Problem] = []
        notes: list[str] = []

        url = None
        try:
            url = parse_url(spec.url, allow_http=self.settings.allow_http)
        except PolicyViolation as violation:
            problems.append(Problem(violation.reason, violation.message))
        if url is not None:
            try:
                await allowed_addresses(url.host, url.port, self.settings.destination_policy, self.resolve)
            except BlockedDestination as violation:
                problems.append(Problem(violation.reason, violation.message))
            except PolicyViolation as violation:
                # DNS can fail for a moment; the connect-time check still guards every delivery.
                notes.append(violation.message)

        headers, header_problem = await resolve_headers(self.kube, namespace, spec)
        if header_problem:
            problems.append(header_problem)
        keys = await ensure_signing_keys(self.kube, body, spec, current, write=leading)
        if keys.problem:
            problems.append(keys.problem)
        deferred = keys.deferred

        rotation = dict(status.get("keyRotation") or {})
        requested = annotations.get(ROTATE_ANNOTATION)
        if requested and requested != rotation.get("requestedAt") and not leading:
            deferred = True
        elif requested and requested != rotation.get("requestedAt"):
            rotation = await self._rotate(body, spec.signing_key_ref is not None, keys.problem, requested)
            if "rotatedAt" in rotation:
                keys = await ensure_signing_keys(self.kube, body, spec, now())

        state.spec = spec
        state.body = slim_body(body)
        state.generation = int(meta.get("generation") or 0)
        state.url = url
        state.headers = headers
        state.keys = keys.keys
        state.secret_refs = secret_refs(spec) | {signing_secret_name(name)}
        state.ready = not problems
        state.resolving = False
        state.fingerprint = fingerprint
        self.index.put(state)
        self.metrics.webhook_state(namespace, name, enabled=spec.enabled, ready=state.ready)
        self.metrics.health(namespace, name, state.health.summary(current))

        if problems:
            ready = ("False", problems[0].reason, " ".join(p.message for p in problems))
        elif not spec.enabled:
            ready = ("True", "Reconciled", "disabled: no events are delivered while spec.enabled is false")
        else:
            target = f"{url.scheme}://{url.host}" if url else ""
            ready = (
                "True",
                "Reconciled",
                " ".join([f"delivering {len(spec.events)} event pattern(s) to {target}", *notes]),
            )
        generation = state.generation
        conditions = merge_conditions(
            webhook_conditions(status.get("conditions"), ready=ready, generation=generation, now=current),
            [self._healthy_condition(state, status.get("conditions"))],
        )
        desired: dict[str, Any] = {
            "observedGeneration": generation,
            "signingKeySecretName": keys.secret_name,
            "conditions": conditions,
            "health": state.health.to_status(current),
        }
        if rotation:
            desired["keyRotation"] = rotation
        if not leading:
            if deferred or self._status_differs(status, desired) or self._test_requested(annotations, status):
                self._deferred.add(state.key)
            else:
                self._deferred.discard(state.key)
            return
        self._deferred.discard(state.key)
        await self._write_status(state, status, desired)
        if keys.previous_expires_at is not None:
            self._schedule(state.key, (keys.previous_expires_at - now()).total_seconds() + 1)

        test_value = self._test_requested(annotations, status)
        if test_value:
            self._start_test(state, test_value, None if state.ready else ready[2])

    @staticmethod
    def _test_requested(annotations: dict[str, Any], status: dict[str, Any]) -> str | None:
        value = annotations.get(TEST_ANNOTATION)
        return value if value and value != (status.get("lastTest") or {}).get("requestedAt") else None

    def _follow_health(self, state: WebhookState, status: dict[str, Any]) -> None:
        written = status.get("health")
        state.health = HealthWindow.from_status(written)
        state.health_dirty = False
        self.metrics.health(state.namespace, state.name, state.health.summary(now()))
        if isinstance(written, dict):
            self._health_written[state.key] = written

    def _healthy_condition(self, state: WebhookState, existing: Any) -> dict[str, Any]:
        status, reason, message = healthy_condition(state.health.summary(now()))
        return condition(
            existing,
            type_="Healthy",
            status=status,
            reason=reason,
            message=message,
            generation=state.generation,
            now=now(),
        )

    @staticmethod
    def _status_differs(current: dict[str, Any], desired: dict[str, Any]) -> bool:
        return not all(
            (without_volatile(current.get(k)) == without_volatile(v)) if k == "conditions" else current.get(k) == v
            for k, v in desired.items()
        )

    async def _write_status(self, state: WebhookState, current: dict[str, Any], desired: dict[str, Any]) -> None:
        if not self._status_differs(current, desired):
            return
        result = await self.kube.merge_patch(webhook_path(state.namespace, state.name, "status"), {"status": desired})
        state.body = slim_body(result) if result else state.body
        self._health_written[state.key] = desired.get("health", {})

    async def _rotate(
        self, body: dict[str, Any], user_key: bool, problem: Problem | None, requested: str
    ) -> dict[str, Any]:
        if user_key:
            message = "spec.signingKeySecretRef is set: rotate the key in that Secret yourself"
            await record(self.kube, body, type_="Warning", reason="KeyRotationSkipped", message=message)
            return {"requestedAt": requested, "message": message}
        if problem is not None:
            message = f"key not rotated: {problem.message}"
            await record(self.kube, body, type_="Warning", reason="KeyRotationFailed", message=message)
            return {"requestedAt": requested, "message": message}
        rotated = now()
        expires = await rotate_signing_key(self.kube, body, self.settings.key_rotation_overlap_s, rotated)
        overlap = self.settings.key_rotation_overlap_s
        await record(
            self.kube,
            body,
            type_="Normal",
            reason="KeyRotated",
            message=f"new signing key in place; the previous key keeps signing until {format_time(expires)}"
            if overlap > 0
            else "new signing key in place; the previous key was dropped at once",
        )
        result = {"requestedAt": requested, "rotatedAt": format_time(rotated)}
        if overlap > 0:
            result["previousKeyExpiresAt"] = format_time(expires)
        return result

    def _schedule(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        old = self._timers.pop(key, None)
        if old:
            old.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            state = self.index.get(*key)
            if state is not None:
                self._spawn(self.reconcile(state.body, force=True))
            else:
                self._spawn(self._reconcile_by_name(*key))

        self._timers[key] = loop.call_later(max(delay, 0.05), fire)

    async def _reconcile_by_name(self, namespace: str, name: str) -> None:
        try:
            body = await self.kube.get(webhook_path(namespace, name))
        except (ApiError, OSError) as exc:
            key = (namespace, name)
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = backoff_delay(failures, retry_after=retry_after_of(exc))
            log.warning("reading webhook %s/%s failed, retrying in %.1fs: %s", namespace, name, delay, exc)
            self._schedule(key, delay)
            return
        if body is not None:
            await self.reconcile(body, force=True)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- test payloads ------------------------------------------------------------------
    def _start_test(self, state: WebhookState, value: str, not_ready: str | None) -> None:
        marker = (state.uid, value)
        if marker in self._tests_running or self.send_test is None:
            return
        self._tests_running.add(marker)
        self._spawn(self._run_test(state, value, not_ready, marker))

    async def _run_test(self, state: WebhookState, value: str, not_ready: str | None, marker: tuple[str, str]) -> None:
        try:
            assert self.send_test is not None
            if not_ready:
                results = [
                    {"event": sample_event_for(e), "error": f"not sent: webhook not Ready: {not_ready}"[:512]}
                    for e in state.spec.events
                ]
            else:
                results = list(await asyncio.gather(*(self.send_test(state, e) for e in state.spec.events)))
            last_test = {"requestedAt": value, "completedAt": format_time(now()), "results": results}
            path = webhook_path(state.namespace, state.name, "status")
            async with self._locks[state.key]:
                await with_retries(
                    lambda: self.kube.merge_patch(path, {"status": {"lastTest": last_test}}),
                    what=f"recording the test of {state.hook_id}",
                    give_up=lambda: self.index.get(*state.key) is None,
                )
            failed = [r for r in results if r.get("error") or not (200 <= int(r.get("statusCode") or 0) < 300)]
            summary = ", ".join(f"{r['event']}: {r.get('statusCode') or r.get('error', '')}" for r in results)
            await record(
                self.kube,
                state.body,
                type_="Warning" if failed else "Normal",
                reason="TestPayloadFailed" if failed else "TestPayloadSent",
                message=f"test payloads: {summary}",
            )
        except (ApiError, OSError) as exc:
            log.warning("test payload for %s failed to record: %s", state.hook_id, exc)
        finally:
            self._tests_running.discard(marker)

    # -- health -------------------------------------------------------------------------
    def delivery_completed(self, state: WebhookState, *, succeeded: bool, status_code: int | None) -> None:
        state.health.record(now(), succeeded=succeeded, status_code=status_code)
        state.health_dirty = True

    async def flush_health(self, *, everything: bool = False) -> None:
        """Write health of webhooks with new deliveries (or all whose 24h figures moved)."""
        current = now()
        for state in list(self.index):
            if not (state.health_dirty or everything):
                continue
            state.health_dirty = False
            health = state.health.to_status(current)
            summary = state.health.summary(current)
            self.metrics.health(state.namespace, state.name, summary)
            if self._health_written.get(state.key) == health:
                continue
            async with self._locks[state.key]:
                existing = (state.body.get("status") or {}).get("conditions")
                conditions = merge_conditions(existing, [self._healthy_condition(state, existing)])
                try:
                    result = await self.kube.merge_patch(
                        webhook_path(state.namespace, state.name, "status"),
                        {"status": {"health": health, "conditions": conditions}},
                    )
                except ApiError as exc:
                    if exc.status == 404:
                        continue
                    state.health_dirty = True
                    log.warning("writing health of %s failed, will retry: %s", state.hook_id, exc)
                    continue
                except OSError as exc:
                    state.health_dirty = True
                    log.warning("writing health of %s failed, will retry: %s", state.hook_id, exc)
                    continue
                state.body = slim_body(result) if result else state.body
                self._health_written[state.key] = health

    async def health_loop(self) -> None:
        last_full = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.settings.health_flush_s)
            full = asyncio.get_running_loop().time() - last_full >= HEALTH_RESYNC_S
            if full:
                last_full = asyncio.get_running_loop().time()
            try:
                await self.flush_health(everything=full)
            except Exception:  # the loop must outlive any one bad write
                log.exception("health flush failed")


def managed_signing_secret_owner(body: dict[str, Any]) -> str | None:
    labels = (body.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL[0]) != MANAGED_BY_LABEL[1]:
        return None
    owner = labels.get("webhook-operator.io/webhook")
    return owner if isinstance(owner, str) else None


__all__ = ["GROUP", "VERSION", "WebhookController", "managed_signing_secret_owner"]
