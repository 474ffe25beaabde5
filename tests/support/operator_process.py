"""The operator as a separate process, the way it runs in a cluster: start, stop, SIGKILL, read metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        args: list[str],
        log_path: Path,
        *,
        ready_line: str = "delivering",
        env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.wrapper = wrapper or []  # a command the operator runs under (unshare with another resolv.conf)
        self.args = args
        self.log_path = log_path
        # start() returns once the log has this line (the leader's "delivering"; a standby says "campaigning").
        self.ready_line = ready_line
        self.env = env or {}
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0, *, kill_unready: bool = True) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", **self.env}
        argv = [
            *self.wrapper,
            sys.executable,
            "-m",
            "webhook_operator.cli",
            "run",
            "--bind-address",
            "127.0.0.1",
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            *self.args,
        ]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.ready_line in self.log_path.read_bytes()[offset:].decode(errors="replace") and self._healthy():
                return self
            time.sleep(0.1)
        if kill_unready:  # the caller usually never gets a handle to stop it with
            self.proc.kill()
            self.proc.wait()
        raise AssertionError(f"operator not ready after {timeout}s:\n{self.log()[-3000:]}")

    def _healthy(self) -> bool:
        return self.probe("/healthz") == 200

    def probe(self, path: str) -> int | None:
        """The status code of /healthz or /readyz; None if nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=1) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
