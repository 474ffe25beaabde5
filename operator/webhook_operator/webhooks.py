"""Reconciling Webhooks: checks, signing keys, the index entry, status, health writes and actions.

Only ``status`` of a Webhook is ever written, so GitOps tools see no drift. Every replica keeps
the index warm; only the leader writes (``is_leader``): a standby notes what it would have
written and the leader reconciles those webhooks again when it takes over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from webhook_operator import GROUP, VERSION
from webhook_operator.apiretry import backoff_delay, retry_after_of, with_retries
from webhook_operator.delivery.attempt import AttemptResult
from webhook_operator.filter import CompiledFilter, FilterError, compile_filter
from webhook_operator.health import HealthWindow, healthy_condition
from webhook_operator.index import Key, WebhookIndex, WebhookState
from webhook_operator.kube import ApiError, KubeClient, resource_path
from webhook_operator.matching import sample_event_for
from webhook_operator.metrics import Metrics
from webhook_operator.model import (
    MANAGED_BY_LABEL,
    RESUME_ANNOTATION,
    ROTATE_ANNOTATION,
    TEST_ANNOTATION,
    WebhookSpec,
    format_time,
    now,
    parse_time,
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
    ListedSecrets,
    Problem,
    SecretReader,
    ensure_signing_keys,
    list_signing_secrets,
    resolve_headers,
    resolve_tls,
    rotate_signing_key,
    secret_refs,
)
from webhook_operator.settings import Settings
from webhook_operator.status import condition, merge_conditions, webhook_conditions, without_volatile

log = logging.getLogger(__name__)
HEALTH_RESYNC_S = 60.0
# Webhooks reconciled at once at start-up and take-over (each may wait on DNS and a few API calls).
RECONCILE_CONCURRENCY = 16
# More webhooks than this reconciled together read the signing-key Secrets from one list.
LIST_SECRETS_FROM = 16

# status.autoDisable: failingSince (first failed attempt since the last success), and while suspended
# disabledAt, reason (Gone | FailingTooLong), message and the generation it was suspended at;
# resumeRequestedAt is the last resume annotation value handled.
AUTO_DISABLE_FIELDS = ("failingSince", "disabledAt", "reason", "message", "generation", "resumeRequestedAt")

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
        # While webhooks are loaded at start-up: the signing-key Secrets listed once, read from here
        # instead of one GET per webhook (see secrets.SecretReader).
        self.listed_secrets: ListedSecrets | None = None

    # -- watch entry points -------------------------------------------------------------
    async def on_event(self, type_: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        if type_ == "DELETED":
            self.forget(meta.get("namespace", ""), meta.get("name", ""))
            return
        state = self.index.get(meta.get("namespace", ""), meta.get("name", ""))
        if state is not None and state.uid == meta.get("uid") and not state.resolving:
            version = meta.get("resourceVersion")
            if version is not None and version == (state.body.get("metadata") or {}).get("resourceVersion"):
                # The very version this webhook was reconciled from or written to (the watch's first
                # list after start-up; the event of our own status write): nothing to do.
                return
        await self.reconcile(body)

    async def on_secret_event(self, body: dict[str, Any], type_: str | None = None) -> None:
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        seen = None if type_ == "DELETED" else (name, meta.get("resourceVersion"))
        for state in self.index.readers_of_secret(namespace, name):
            await self.reconcile(state.body, force=True, unless_read=seen)

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
        if len(bodies) > LIST_SECRETS_FROM and self.listed_secrets is None:
            # Many (a first start: no Secrets yet): one list of the signing-key Secrets, not a GET each.
            self.listed_secrets = await list_signing_secrets(self.kube, self.settings.namespaces)
            try:
                await self.reconcile_all(bodies)
            finally:
                self.listed_secrets = None
            return
        await self.reconcile_all(bodies)

    async def reconcile(
        self, body: dict[str, Any], *, force: bool = False, unless_read: tuple[str, str | None] | None = None
    ) -> None:
        """``unless_read`` (Secret name, resourceVersion): nothing to do if the webhook was resolved from
        that very version (a Secret watch's first list at start-up; the event of our own write)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        async with self._locks[key]:
            state = self.index.get(*key)
            if unless_read is not None and unless_read[1] is not None and state is not None:
                if state.uid == meta["uid"] and state.secret_versions.get(unless_read[0], "") == unless_read[1]:
                    return
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
        spec = parse_webhook_spec(body.get("spec") or {})
        status = body.get("status") or {}
        compiled, _ = compiled_filter(spec, None)
        return WebhookState(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            spec=spec,
            body=slim_body(body),
            health=HealthWindow.from_status(status.get("health")),
            limiter=asyncio.Semaphore(self.settings.per_webhook_concurrency),
            filter=compiled,
            auto_disable=auto_disable_from_status(status.get("autoDisable")),
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
            annotations.get(RESUME_ANNOTATION),
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

        reader = SecretReader(self.kube, self.listed_secrets)
        headers, header_problem = await resolve_headers(reader, namespace, spec)
        if header_problem:
            problems.append(header_problem)
        tls, tls_problem = await resolve_tls(reader, namespace, spec)
        if tls_problem:
            problems.append(tls_problem)
        compiled, filter_problem = compiled_filter(spec, state.filter)
        if filter_problem:
            problems.append(filter_problem)
        keys = await ensure_signing_keys(reader, body, spec, current, write=leading)
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
                fresh = SecretReader(self.kube)
                keys = await ensure_signing_keys(fresh, body, spec, now())
                reader.versions.update(fresh.versions)

        generation = int(meta.get("generation") or 0)
        resumed: str | None = None
        if state.suspended:
            asked = annotations.get(RESUME_ANNOTATION)
            if state.auto_disable.get("generation") != generation:
                resumed = "its spec changed"
            elif asked and asked != state.auto_disable.get("resumeRequestedAt"):
                resumed = f"resume requested at {asked}"
            if resumed and leading:
                state.auto_disable = {"resumeRequestedAt": asked} if asked else {}
            elif resumed:  # the leader decides
                resumed, deferred = None, True

        state.spec = spec
        state.body = slim_body(body)
        state.generation = generation
        state.tls = tls
        state.filter = compiled
        state.url = url
        state.headers = headers
        state.keys = keys.keys
        state.secret_refs = secret_refs(spec) | {signing_secret_name(name)}
        state.secret_versions = reader.versions
        state.ready = not problems
        state.resolving = False
        state.fingerprint = fingerprint
        self.index.put(state)
        self.metrics.webhook_state(
            namespace, name, enabled=spec.enabled, ready=state.ready and not state.suspended, suspended=state.suspended
        )
        self.metrics.health(namespace, name, state.health.summary(current))

        if problems:
            ready = ("False", problems[0].reason, " ".join(p.message for p in problems))
        elif state.suspended:
            ready = ("False", "AutoDisabled", str(state.auto_disable.get("message") or "auto-disabled"))
        elif not spec.enabled:
            ready = ("True", "Reconciled", "disabled: no events are delivered while spec.enabled is false")
        else:
            target = f"{url.scheme}://{url.host}" if url else ""
            ready = (
                "True",
                "Reconciled",
                " ".join([f"delivering {len(spec.events)} event pattern(s) to {target}", *notes]),
            )
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
        if state.auto_disable or status.get("autoDisable"):
            desired["autoDisable"] = auto_disable_patch(state.auto_disable)
        if not leading:
            if deferred or self._status_differs(status, desired) or self._test_requested(annotations, status):
                self._deferred.add(state.key)
            else:
                self._deferred.discard(state.key)
            return
        self._deferred.discard(state.key)
        await self._write_status(state, status, desired)
        state.auto_disable_dirty = False
        if resumed:
            log.info("webhook %s resumed: %s", state.hook_id, resumed)
            await record(self.kube, body, type_="Normal", reason="Resumed", message=f"resumed: {resumed}")
        if keys.previous_expires_at is not None:
            self._schedule(state.key, (keys.previous_expires_at - now()).total_seconds() + 1)

        test_value = self._test_requested(annotations, status)
        if test_value:
            self._start_test(state, test_value, None if state.ready else ready[2])

    @staticmethod
    def _test_requested(annotations: dict[str, Any], status: dict[str, Any]) -> str | None:
        value = annotations.get(TEST_ANNOTATION)
        return value if value and value != (status.get("lastTest") or {}).get("requestedAt") else None

    def follow_written(self, bodies: list[dict[str, Any]]) -> None:
        """Health and auto-disable as written in these (freshly listed) Webhooks' status: on taking the lead,
        before anything is counted on top of them."""
        for body in bodies:
            meta = body.get("metadata") or {}
            state = self.index.get(meta.get("namespace", ""), meta.get("name", ""))
            if state is not None and state.uid == meta.get("uid"):
                self._follow_health(state, body.get("status") or {})

    def _follow_health(self, state: WebhookState, status: dict[str, Any]) -> None:
        written = status.get("health")
        suspended = state.suspended
        state.auto_disable = auto_disable_from_status(status.get("autoDisable"))
        if state.suspended != suspended:
            ready = state.ready and not state.suspended
            self.metrics.webhook_state(
                state.namespace, state.name, enabled=state.spec.enabled, ready=ready, suspended=state.suspended
            )
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
        def same(key: str, value: Any) -> bool:
            if key == "conditions":
                return bool(without_volatile(current.get(key)) == without_volatile(value))
            if key == "autoDisable":  # a merge patch removes with null; what is stored has no nulls
                return auto_disable_from_status(current.get(key)) == auto_disable_from_status(value)
            return bool(current.get(key) == value)

        return not all(same(k, v) for k, v in desired.items())

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
            auto_disable = state.auto_disable_dirty
            if self._health_written.get(state.key) == health and not auto_disable:
                continue
            async with self._locks[state.key]:
                existing = (state.body.get("status") or {}).get("conditions")
                conditions = merge_conditions(existing, [self._healthy_condition(state, existing)])
                patch: dict[str, Any] = {"health": health, "conditions": conditions}
                if auto_disable:
                    state.auto_disable_dirty = False
                    patch["autoDisable"] = auto_disable_patch(state.auto_disable)
                try:
                    result = await self.kube.merge_patch(
                        webhook_path(state.namespace, state.name, "status"), {"status": patch}
                    )
                except ApiError as exc:
                    if exc.status == 404:
                        continue
                    state.health_dirty = True
                    state.auto_disable_dirty = state.auto_disable_dirty or auto_disable
                    log.warning("writing health of %s failed, will retry: %s", state.hook_id, exc)
                    continue
                except OSError as exc:
                    state.health_dirty = True
                    state.auto_disable_dirty = state.auto_disable_dirty or auto_disable
                    log.warning("writing health of %s failed, will retry: %s", state.hook_id, exc)
                    continue
                state.body = slim_body(result) if result else state.body
                self._health_written[state.key] = health

    # -- auto-disable -------------------------------------------------------------------
    def attempt_done(self, state: WebhookState, result: AttemptResult) -> None:
        """Follow a webhook's failures after every attempt (the leader's engine calls this), and suspend
        it on a 410 or once every attempt has failed for spec.autoDisable.afterFailingFor."""
        if not self.is_leader() or state.suspended or self.index.get(*state.key) is not state:
            return
        current = now()
        decision = auto_disable_decision(
            state.auto_disable,
            succeeded=result.succeeded,
            status_code=result.status_code,
            after_s=self.after_failing_for(state.spec),
            now=current,
        )
        if decision.auto_disable != state.auto_disable:
            state.auto_disable = decision.auto_disable
            state.auto_disable_dirty = state.health_dirty = True  # written with the next health flush
        if decision.suspend is None:
            return
        reason, why = decision.suspend
        annotations = (state.body.get("metadata") or {}).get("annotations") or {}
        message = (
            f"auto-disabled at {format_time(current)}: {why}. No events are sent to it until it is resumed: fix "
            f"the receiver, then run `kubectl webhooks resume {state.name} -n {state.namespace}` or change its spec."
        )
        state.auto_disable = {
            "failingSince": state.auto_disable.get("failingSince"),
            "disabledAt": format_time(current),
            "reason": reason,
            "message": message,
            "generation": state.generation,
            "resumeRequestedAt": annotations.get(RESUME_ANNOTATION),
        }
        state.auto_disable = {k: v for k, v in state.auto_disable.items() if v is not None}
        state.auto_disable_dirty = True
        log.warning("webhook %s auto-disabled (%s): %s", state.hook_id, reason, why)
        self.metrics.disabled(state.namespace, state.name, reason)
        self.metrics.webhook_state(state.namespace, state.name, enabled=state.spec.enabled, ready=False, suspended=True)
        self._spawn(self._announce_suspension(state, message))

    def after_failing_for(self, spec: WebhookSpec) -> float:
        return self.settings.auto_disable_after_s if spec.auto_disable_after_s is None else spec.auto_disable_after_s

    async def _announce_suspension(self, state: WebhookState, message: str) -> None:
        try:
            await record(self.kube, state.body, type_="Warning", reason="AutoDisabled", message=message)
        except (ApiError, OSError) as exc:
            log.warning("the AutoDisabled Event of %s was not recorded: %s", state.hook_id, exc)
        await self.reconcile(state.body, force=True)  # writes Ready=False AutoDisabled

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


def compiled_filter(spec: WebhookSpec, previous: CompiledFilter | None) -> tuple[CompiledFilter | None, Problem | None]:
    """spec.filter compiled (once per distinct source), or the InvalidFilter problem."""
    if not spec.filter:
        return None, None
    if previous is not None and previous.source == spec.filter:
        return previous, None
    try:
        return compile_filter(spec.filter), None
    except FilterError as exc:
        return None, Problem("InvalidFilter", f"spec.filter: {exc}")


def auto_disable_from_status(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    return {k: raw[k] for k in AUTO_DISABLE_FIELDS if raw.get(k) is not None}


def auto_disable_patch(auto_disable: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that makes status.autoDisable exactly ``auto_disable`` (null removes a field)."""
    return {k: auto_disable.get(k) for k in AUTO_DISABLE_FIELDS}


@dataclass(frozen=True)
class AutoDisableDecision:
    auto_disable: dict[str, Any]  # the new status.autoDisable
    suspend: tuple[str, str] | None = None  # (reason, why) when the webhook is to be suspended


def auto_disable_decision(
    auto_disable: dict[str, Any], *, succeeded: bool, status_code: int | None, after_s: float, now: dt.datetime
) -> AutoDisableDecision:
    """What one attempt's result does to a webhook that is not suspended (pure).

    A success ends a failing streak; a failure starts one (failingSince) or continues it. With
    ``after_s`` 0 nothing ever suspends; otherwise a 410 Gone suspends at once (the Standard
    Webhooks meaning: disable this endpoint), and a failure suspends once every attempt since
    failingSince has failed for ``after_s`` or longer.
    """
    if succeeded:
        return AutoDisableDecision({k: v for k, v in auto_disable.items() if k != "failingSince"})
    since = parse_time(auto_disable.get("failingSince"))
    updated = auto_disable if since is not None else {**auto_disable, "failingSince": format_time(now)}
    if after_s <= 0:
        return AutoDisableDecision(updated)
    if status_code == 410:
        return AutoDisableDecision(updated, ("Gone", "the receiver answered 410 Gone"))
    if since is not None and (now - since).total_seconds() >= after_s:
        return AutoDisableDecision(
            updated,
            ("FailingTooLong", f"every attempt since {format_time(since)} has failed (afterFailingFor {after_s:g}s)"),
        )
    return AutoDisableDecision(updated)


def managed_signing_secret_owner(body: dict[str, Any]) -> str | None:
    labels = (body.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL[0]) != MANAGED_BY_LABEL[1]:
        return None
    owner = labels.get("webhook-operator.io/webhook")
    return owner if isinstance(owner, str) else None


__all__ = ["GROUP", "VERSION", "WebhookController", "managed_signing_secret_owner"]
