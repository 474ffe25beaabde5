"""A real Prometheus server for tests, and the dashboard's queries in a form it can run.

Needs the `prometheus` binary (Debian: `apt-get install prometheus`); `promtool` comes with it.

Example::

    with PrometheusServer(["127.0.0.1:8080"], rule_files=[ALERTS_FILE]) as prom:
        prom.wait_until_scraped()
        prom.wait_for('webhook_operator_webhook_ready{webhook="billing-sync"}', lambda r: r[0]["value"][1] == "1")
        for title, expr in dashboard_queries(DASHBOARD_FILE):
            prom.query(expr)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = REPO_ROOT / "charts" / "webhook-operator" / "dashboards" / "webhook-operator.json"
ALERTS_FILE = REPO_ROOT / "charts" / "webhook-operator" / "files" / "alerts.yaml"
JOB_NAME = "webhook-operator"

# What Grafana would put in for its built-in variables on a 1s scrape interval; `.*` is the
# dashboard's "All" value for the template variables.
DEFAULT_DASHBOARD_VARIABLES: Mapping[str, str] = {
    "namespace": ".*",
    "webhook": ".*",
    "datasource": "prometheus",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")

Sample = dict[str, Any]


class PrometheusNotInstalledError(RuntimeError):
    """The Prometheus binaries are missing; the message says how to install them."""


class PrometheusQueryError(RuntimeError):
    """Prometheus rejected a query (parse or evaluation error); the message is Prometheus's."""


def find_binary(name: str) -> str:
    """Path of `prometheus` or `promtool`: `$PROMETHEUS_BIN_DIR` first, then `PATH`."""
    bin_dir = os.environ.get("PROMETHEUS_BIN_DIR")
    if bin_dir and (Path(bin_dir) / name).is_file():
        return str(Path(bin_dir) / name)
    found = shutil.which(name)
    if found is None:
        raise PrometheusNotInstalledError(
            f"`{name}` not found on PATH (nor in $PROMETHEUS_BIN_DIR). "
            "Install Prometheus and promtool with: apt-get install prometheus"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusServer:
    """A Prometheus process on 127.0.0.1 scraping `targets` every `scrape_interval`.

    Use it as a context manager: entering writes the config, starts the server with a
    temporary storage directory and waits until it is ready; leaving stops it and removes
    the directory. The scrape job is named `webhook-operator`, as the alert rules expect.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
        job_name: str = JOB_NAME,
        startup_timeout: float = 30.0,
    ) -> None:
        self.targets = list(targets)
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_interval = scrape_interval
        self.job_name = job_name
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. `http://127.0.0.1:40123`."""
        if not self.port:
            raise RuntimeError("PrometheusServer is not running; use it in a `with` block")
        return f"http://127.0.0.1:{self.port}"

    @property
    def workdir(self) -> Path:
        """Temporary folder with prometheus.yml, prometheus.log and the TSDB (`data/`)."""
        if self._workdir is None:
            raise RuntimeError("PrometheusServer is not running; use it in a `with` block")
        return Path(self._workdir.name)

    def config(self) -> dict[str, Any]:
        """The prometheus.yml contents this server runs with."""
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                # The default timeout (10s) would exceed a 1s interval and be rejected.
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": self.job_name, "static_configs": [{"targets": self.targets}]}],
        }

    def __enter__(self) -> PrometheusServer:
        binary = find_binary("prometheus")
        self._workdir = tempfile.TemporaryDirectory(prefix="prometheus-test-")
        workdir = Path(self._workdir.name)
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        try:
            self._start(binary, config_file, workdir)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self, binary: str, config_file: Path, workdir: Path) -> None:
        log_path = workdir / "prometheus.log"
        # Another process may take the probed port before Prometheus binds it: try again.
        for _ in range(3):
            self.port = _free_port()
            with log_path.open("wb") as log:
                self._process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config_file}",
                        f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--log.level=warn",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_ready(log_path):
                return
            if "address already in use" not in log_path.read_text(errors="replace"):
                break
        log_tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"Prometheus did not become ready within {self.startup_timeout}s. Its log:\n{log_tail}")

    def _wait_ready(self, log_path: Path) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self._terminate()
        return False

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server and delete its storage; safe to call more than once."""
        self._terminate()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        self.port = 0

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET `/api/v1/<path>` and return its `data`; raises PrometheusQueryError on an API error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request_url = f"{self.url}/api/v1/{path}{query}"
        try:
            with urllib.request.urlopen(request_url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            # 400/422/503 carry the JSON error body Prometheus explains the failure in.
            try:
                body = json.load(error)
            except ValueError:
                raise PrometheusQueryError(f"GET {request_url}: HTTP {error.code}") from error
        if body.get("status") != "success":
            raise PrometheusQueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """Evaluate `expr` now (`/api/v1/query`) and return the result as a list of samples.

        Vector and matrix results come back as Prometheus returns them (`metric` plus
        `value` or `values`); a scalar or string becomes one sample with empty `metric`.
        """
        data = self.api("query", {"query": expr})
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        samples: list[Sample] = result
        return samples

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[Sample]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[Sample]:
        """Poll `query(expr)` until `predicate(result)` holds and return that result.

        The default predicate waits for a non-empty result. Raises TimeoutError with the
        last result when the time runs out; query errors are raised at once.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"after {timeout}s, {expr!r} still returned {result!r}")
            time.sleep(0.2)

    def wait_until_scraped(self, timeout: float = 30.0) -> None:
        """Wait until every target has been scraped successfully (`up == 1`)."""
        expected = len(self.targets)
        self.wait_for(f'up{{job="{self.job_name}"}} == 1', lambda result: len(result) == expected, timeout)

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rules (`/api/v1/rules`), flattened over groups; each has health and lastError."""
        groups = self.api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (`/api/v1/alerts`)."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts


def substitute_variables(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana variables (`$name`, `${name}`, `${name:format}`, `[[name]]`) in `expr`.

    Raises KeyError naming a variable that `variables` does not define, so a query that uses
    an undeclared variable cannot slip through.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in variables:
            raise KeyError(f"variable ${name} in {expr!r} has no value")
        return variables[name]

    return _VARIABLE.sub(replace, expr)


def _panels(panels: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        # Collapsed rows keep their panels nested.
        yield from _panels(panel.get("panels", []))


def dashboard_panels(path: Path = DASHBOARD_FILE) -> list[dict[str, Any]]:
    """Every panel of the dashboard at `path`, including those inside collapsed rows."""
    dashboard = json.loads(Path(path).read_text())
    return list(_panels(dashboard["panels"]))


def dashboard_queries(
    path: Path = DASHBOARD_FILE,
    variables: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every panel target, with variables substituted.

    `variables` overrides DEFAULT_DASHBOARD_VARIABLES, e.g. `{"namespace": "shop"}`.
    """
    values = {**DEFAULT_DASHBOARD_VARIABLES, **(variables or {})}
    return [
        (panel["title"], substitute_variables(target["expr"], values))
        for panel in dashboard_panels(path)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
