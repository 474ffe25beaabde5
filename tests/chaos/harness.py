"""Load and bookkeeping for the fault scenarios: publish events, then count what a fault did.

- lost: a delivery (event x subscribed webhook) the receiver never answered with a 2xx;
- stuck: an event not final (Delivered, Failed, ...) once the run has settled;
- duplicated: 2xx answers beyond the first for one delivery id (``webhook-id``), which only
  attempts in flight at a kill may cause.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.receiver import Receiver
from webhook_operator.kube import ApiError, KubeClient, resource_path
from webhook_operator.kubeconfig import from_kubeconfig
from webhook_operator.model import FINAL_PHASES
from webhook_operator.signing import message_id

API_VERSION = "webhook-operator.io/v1alpha1"


def env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class Publisher:
    """Creates WebhookEvents named ``<prefix>-<i>`` from a thread of its own, riding out API outages:
    a create whose answer was lost is made again and its AlreadyExists counts as created."""

    def __init__(
        self, kubeconfig: Path, namespace: str, event: str, *, data_bytes: int = 64, concurrency: int = 16
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.event = event
        self.data = {"pad": "x" * data_bytes}
        self.concurrency = concurrency
        self.published: dict[str, float] = {}  # name -> time.time() the create was first sent
        self.errors = 0
        self._thread: threading.Thread | None = None

    def start(self, count: int, *, prefix: str = "ev", rate: float | None = None) -> Publisher:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(count, prefix, rate)), daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 600) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "publishing did not finish"

    def publish(self, count: int, *, prefix: str = "ev", rate: float | None = None) -> None:
        self.start(count, prefix=prefix, rate=rate).join()

    async def _run(self, count: int, prefix: str, rate: float | None) -> None:
        kube = KubeClient(from_kubeconfig([self.kubeconfig]))
        path = resource_path("webhookevents", self.namespace)
        slots = asyncio.Semaphore(self.concurrency)
        started = time.monotonic()

        async def one(i: int) -> None:
            name = f"{prefix}-{i}"
            body = {
                "apiVersion": API_VERSION,
                "kind": "WebhookEvent",
                "metadata": {"name": name},
                "spec": {"event": self.event, "data": {**self.data, "n": i}},
            }
            async with slots:
                while True:
                    self.published.setdefault(name, time.time())
                    try:
                        await kube.create(path, body)
                        return
                    except ApiError as exc:
                        if exc.status == 409:
                            return
                        self.errors += 1
                    except OSError:
                        self.errors += 1
                    await asyncio.sleep(0.5)

        tasks = []
        for i in range(count):
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        await kube.close()


def kubectl_json(kubeconfig: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    for _ in range(60):
        result = subprocess.run(["kubectl", *args, "-o", "json"], env=env, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return dict(json.loads(result.stdout))
        time.sleep(1)  # the API server may be coming back
    raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")


def events(kubeconfig: Path, namespace: str) -> list[dict[str, Any]]:
    return list(kubectl_json(kubeconfig, "get", "webhookevents", "-n", namespace).get("items") or [])


def wait_settled(kubeconfig: Path, namespace: str, expected: int, *, timeout: float) -> list[dict[str, Any]]:
    """The namespace's events once ``expected`` of them exist and all are final, or at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        items = events(kubeconfig, namespace)
        final = [e for e in items if (e.get("status") or {}).get("phase") in FINAL_PHASES]
        if (len(items) >= expected and len(final) == len(items)) or time.monotonic() > deadline:
            return items
        time.sleep(2)


@dataclass
class Tally:
    events: int = 0
    deliveries: int = 0
    lost: int = 0
    stuck: int = 0
    duplicated: int = 0
    failed_events: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    first_ok_at: dict[str, float] = field(default_factory=dict)  # delivery id -> first 2xx

    def line(self, scenario: str, **figures: object) -> str:
        extra = " ".join(f"{k}={v}" for k, v in figures.items())
        text = f"[chaos] {scenario}: lost={self.lost} stuck={self.stuck} duplicated={self.duplicated}"
        text += f" (events={self.events} deliveries={self.deliveries}) {extra}".rstrip()
        record(text)
        return text


def record(text: str) -> None:
    """Print a scenario's line and append it to .chaos-results.log (the figures of the README's Faults table)."""
    print(text, flush=True)
    with open(Path(__file__).resolve().parent.parent.parent / ".chaos-results.log", "a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}\n")


def tally(
    items: Iterable[dict[str, Any]],
    webhook_uids: dict[str, str],
    receivers: Iterable[Receiver],
    *,
    subscribed: dict[str, list[str]] | None = None,
) -> Tally:
    """Count lost, stuck and duplicated deliveries of ``items`` to webhooks (name -> uid).

    ``subscribed`` maps an event type to the webhook names it goes to (default: every webhook).
    """
    ok: Counter[str] = Counter()
    first_ok: dict[str, float] = {}
    for receiver in receivers:
        for request in receiver.received():
            if 200 <= request.status < 300:
                wid = request.headers.get("webhook-id", "")
                ok[wid] += 1
                first_ok[wid] = min(first_ok.get(wid, request.at), request.at)
    result = Tally(first_ok_at=first_ok)
    for item in items:
        result.events += 1
        status = item.get("status") or {}
        phase = status.get("phase")
        if phase not in FINAL_PHASES:
            result.stuck += 1
        if phase in ("Failed", "PartiallyFailed"):
            result.failed_events += 1
        names = (subscribed or {}).get(item["spec"]["event"], list(webhook_uids))
        for name in names:
            result.deliveries += 1
            wid = message_id(item["metadata"]["uid"], webhook_uids[name])
            if ok[wid] == 0:
                result.lost += 1
            elif ok[wid] > 1:
                result.duplicated += ok[wid] - 1
                result.duplicate_ids.append(wid)
    return result


def webhook_uids(kubeconfig: Path, namespace: str) -> dict[str, str]:
    items = kubectl_json(kubeconfig, "get", "webhooks", "-n", namespace).get("items") or []
    return {w["metadata"]["name"]: w["metadata"]["uid"] for w in items}


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100)[98]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
