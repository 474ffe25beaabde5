"""`make dev`: local control plane, CRDs, a local JetStream, the operator in --dev mode, a demo receiver,
the examples.

Both event paths are shown: WebhookEvents (the examples) and the event bus (a nats-server on
127.0.0.1:4222 with its store under .cluster/jetstream; the ingress publishes there).

The demo receiver is a real HTTPS endpoint on localhost that checks both signatures of every
delivery against the webhook's key (read from its Secret) and prints one line per request.
Ctrl-C stops everything this command started.
"""

from __future__ import annotations

import base64
import ctypes
import hmac
import http.server
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes

from devcluster.controlplane import ControlPlane
from devcluster.pki import CertificateAuthority
from webhook_operator.model import PREVIOUS_KEY, SIGNING_KEY, signing_secret_name
from webhook_operator.signing import logto_signature, standard_signature

ROOT = Path.cwd()
GREEN, RED, DIM, RESET = "\033[32m", "\033[31m", "\033[2m", "\033[0m"


def _say(msg: str) -> None:
    print(f"[dev] {msg}", flush=True)


class SignatureChecker:
    """Looks up a webhook's keys from its Secret (cached) and checks both signature headers."""

    def __init__(self) -> None:
        self._core = kubernetes.client.CoreV1Api()
        self._keys: dict[str, list[str]] = {}

    def _load(self, hook_id: str) -> list[str]:
        namespace, name = hook_id.split("/", 1)
        secret = self._core.read_namespaced_secret(signing_secret_name(name), namespace)
        data = secret.data or {}
        return [base64.b64decode(data[k]).decode() for k in (SIGNING_KEY, PREVIOUS_KEY) if k in data]

    def check(self, hook_id: str, headers: dict[str, str], body: bytes) -> tuple[bool, str]:
        for refresh in (False, True):
            if refresh or hook_id not in self._keys:
                try:
                    self._keys[hook_id] = self._load(hook_id)
                except Exception as exc:  # a demo: report, keep serving
                    return False, f"cannot read signing key: {exc}"
            keys = self._keys[hook_id]
            logto_ok = hmac.compare_digest(headers.get("logto-signature-sha-256", ""), logto_signature(keys[0], body))
            msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
            offered = set(headers.get("webhook-signature", "").split())
            standard_ok = any(standard_signature(k, msg_id, int(stamp), body) in offered for k in keys)
            if logto_ok and standard_ok:
                return True, f"signatures ok ({len(offered)} standard-webhooks signature(s))"
        return False, "SIGNATURE MISMATCH"


def serve_receiver(port: int, cert: Path, key: Path, checker: SignatureChecker) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                payload: dict[str, Any] = json.loads(body)
            except ValueError:
                payload = {}
            ok, note = checker.check(str(payload.get("hookId", "")), headers, body)
            colour = GREEN if ok else RED
            test = " (test payload)" if payload.get("test") else ""
            print(
                f"{colour}[receiver] {self.path} {payload.get('hookId')} {payload.get('event')}{test} "
                f"id={headers.get('webhook-id')} {note}{RESET} {DIM}data={json.dumps(payload.get('data'))}{RESET}",
                flush=True,
            )
            reply = b"ok"
            self.send_response(200)
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _kubectl(env: dict[str, str], *args: str) -> None:
    result = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    for line in result.stdout.splitlines():
        _say(line)


def _die_with_parent() -> None:
    """Linux: the operator gets SIGTERM if this process dies without cleaning up."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def start_nats(state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """nats-server with JetStream on loopback, its file store under the dev state dir."""
    from devcluster import binaries

    store = state_dir / "jetstream"
    store.mkdir(parents=True, exist_ok=True)
    log = open(state_dir / "logs" / "nats-server.log", "ab")
    proc = subprocess.Popen(
        [str(binaries.find("nats-server")), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    log.close()
    return proc


async def _publish_demo(url: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        payload = json.dumps({"event": "User.Created", "data": {"id": "u_bus_1", "via": "bus"}}).encode()
        await nc.jetstream().publish("webhook-operator.events.demo", payload, headers={"Nats-Msg-Id": "demo-bus-1"})
    finally:
        await nc.close()


def main(receiver_port: int = 9443, ingress_port: int = 8443, event_bus: bool = True, nats_port: int = 4222) -> int:
    # SIGTERM (e.g. from a supervisor or `timeout`) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    if shutil.which("kubectl") is None:
        print("error: kubectl is needed on PATH for make dev", file=sys.stderr)
        return 1
    plane = ControlPlane(ROOT / ".cluster")
    was_running = plane.running()
    plane.up()
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
    os.environ["KUBECONFIG"] = str(plane.kubeconfig)
    kubernetes.config.load_kube_config(config_file=str(plane.kubeconfig))
    operator: subprocess.Popen[bytes] | None = None
    nats_server: subprocess.Popen[bytes] | None = None
    server: http.server.ThreadingHTTPServer | None = None
    try:
        bus_args: list[str] = []
        if event_bus:
            nats_server = start_nats(plane.state_dir, nats_port)
            bus_args = ["--event-bus", f"nats://127.0.0.1:{nats_port}"]
            _say(f"JetStream on nats://127.0.0.1:{nats_port} (store {plane.state_dir / 'jetstream'})")
        _kubectl(env, "apply", "--server-side", "-f", str(ROOT / "crds"))
        _kubectl(
            env,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/webhooks.webhook-operator.io",
            "crd/webhookevents.webhook-operator.io",
        )
        ca = CertificateAuthority(plane.state_dir / "dev-pki")
        pair = ca.issue("receiver", common_name="localhost", server=True, dns_names=("localhost",), ips=("127.0.0.1",))
        server = serve_receiver(receiver_port, pair.cert, pair.key, SignatureChecker())
        _say(f"demo receiver on https://localhost:{receiver_port}/ (CA {ca.cert_path})")
        ingress = ca.issue(
            "ingress", common_name="localhost", server=True, dns_names=("localhost",), ips=("127.0.0.1",)
        )
        log_path = plane.logs / "operator.log"
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "webhook_operator.cli",
                "run",
                "--dev",
                "--ca-bundle",
                str(ca.cert_path),
                "--bind-address",
                "127.0.0.1",
                "--event-ttl",
                "1h",
                "--ingress-port",
                str(ingress_port),
                "--ingress-tls-cert",
                str(ingress.cert),
                "--ingress-tls-key",
                str(ingress.key),
                *bus_args,
            ],
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=open(log_path, "ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        _say(f"operator running (pid {operator.pid}, log {log_path}, metrics http://127.0.0.1:8080/metrics)")
        time.sleep(2)
        _kubectl(env, "apply", "-f", str(ROOT / "examples"))
        _kubectl(env, "wait", "--for=condition=Ready", "--timeout=60s", "-n", "demo", "webhook/billing-sync")
        _kubectl(env, "create", "-f", str(ROOT / "examples" / "events"))
        if event_bus:
            import asyncio

            asyncio.run(_publish_demo(f"nats://127.0.0.1:{nats_port}"))
            _say("published User.Created to webhook-operator.events.demo on the bus (eventId demo-bus-1)")
        _say(
            "deliveries appear below. Try: kubectl get webhooks,webhookevents -n demo  |  "
            "kubectl webhooks test billing-sync -n demo --wait  |  Ctrl-C to stop"
        )
        _say(f"export KUBECONFIG={plane.kubeconfig}")
        _say(
            "publish over HTTPS: curl --cacert "
            f'{ca.cert_path} -H "Authorization: Bearer $(kubectl create token publisher -n demo)" '
            '-H \'Content-Type: application/json\' -d \'{"event": "User.Created", "data": {"id": 1}}\' '
            f"https://localhost:{ingress_port}/v1/namespaces/demo/events" + ("  (to the bus)" if event_bus else "")
        )
        if event_bus:
            _say(
                f"bus request log: kubectl webhooks logs billing-sync -n demo --event-bus nats://127.0.0.1:{nats_port}"
            )
        while operator.poll() is None:
            time.sleep(0.5)
        _say(f"operator exited with {operator.returncode}; see {log_path}")
        return 1
    except KeyboardInterrupt:
        _say("stopping")
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if operator is not None and operator.poll() is None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(15)
            except subprocess.TimeoutExpired:
                operator.kill()
        if server is not None:
            server.shutdown()
        if nats_server is not None and nats_server.poll() is None:
            nats_server.terminate()
            nats_server.wait(10)
        if not was_running:
            plane.down()
