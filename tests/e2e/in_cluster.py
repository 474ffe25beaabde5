"""Helpers for the in-cluster tests: kubectl port-forward, the receiver Pod's record, kubectl's printed columns."""

from __future__ import annotations

import base64
import json
import re
import select
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.support.kube_helpers import wait_until

# Where the chart installs the operator in the in-cluster tests (release name = chart name, so its
# objects are called plainly "webhook-operator").
RELEASE = "webhook-operator"
OPERATOR_NAMESPACE = "webhook-operator"
METRICS_SERVICE = f"{RELEASE}-metrics"
METRICS_PORT = 8080

_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


@contextmanager
def port_forward(env: Mapping[str, str], namespace: str, target: str, remote_port: int) -> Iterator[int]:
    """``kubectl port-forward`` to ``target`` (``svc/NAME``, ``pod/NAME``) on a free local port, which it yields."""
    proc = subprocess.Popen(
        ["kubectl", "port-forward", "-n", namespace, target, f":{remote_port}", "--address", "127.0.0.1"],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        first_line = proc.stdout.readline() if ready else ""
        match = _FORWARDING.search(first_line)
        if match is None:
            proc.kill()
            raise AssertionError(f"kubectl port-forward {target} did not start: {first_line!r}\n{proc.stderr.read()}")
        # kubectl prints a line per connection; drain them so a full pipe never blocks it.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield int(match.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_get(url: str, context: ssl.SSLContext | None = None, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        text: str = response.read().decode()
        return text


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class InClusterReceiver:
    """The receiver Deployment as the operator reaches it (``url``) and as the tests read it (a port-forward)."""

    namespace: str
    host: str  # the Service's cluster IP, which the receiver's certificate holds
    port: int
    local_port: int
    tls: ssl.SSLContext

    def url(self, path: str) -> str:
        """The URL a Webhook in any namespace uses: the Service's address."""
        return f"https://{self.host}:{self.port}{path}"

    def received(self, path_prefix: str) -> list[ReceivedRequest]:
        """Requests so far whose path starts with ``path_prefix``, in arrival order."""
        record = json.loads(http_get(f"https://127.0.0.1:{self.local_port}/requests", self.tls))
        return [
            ReceivedRequest(item["path"], item["headers"], base64.b64decode(item["body"]))
            for item in record
            if item["path"].startswith(path_prefix)
        ]

    def wait_for(self, count: int, path_prefix: str, timeout: float = 60.0) -> list[ReceivedRequest]:
        """At least ``count`` requests under ``path_prefix``; fails after ``timeout`` seconds."""

        def probe() -> list[ReceivedRequest] | None:
            got = self.received(path_prefix)
            return got if len(got) >= count else None

        return wait_until(probe, timeout=timeout, interval=0.5, what=f"{count} requests under {path_prefix}")


def printed_columns(table: str) -> dict[str, str]:
    """The one row of ``kubectl get`` output as {COLUMN: value}, cut at the header's column positions."""
    header, row = table.rstrip("\n").splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[s:e].strip(): row[s:e].strip() for s, e in zip(starts, ends, strict=True)}
