"""Fixtures for HTTPS receivers and operator processes (plugged in by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.operator_process import OperatorProcess
from tests.support.receiver import Receiver


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_bundle(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def receiver(tls_ca: trustme.CA) -> Iterator[Receiver]:
    server = Receiver(tls_ca)
    yield server
    server.close()


StartOperator = Callable[..., OperatorProcess]


@pytest.fixture
def start_operator(cluster: object, ca_bundle: Path, tmp_path: Path) -> Iterator[StartOperator]:
    """start_operator(namespace, *extra_args): the operator watching one namespace, trusting the test CA."""
    started: list[OperatorProcess] = []

    def start(
        namespace: str,
        *extra: str,
        allow_loopback: bool = True,
        standby: bool = False,
        kubeconfig: Path | None = None,
        env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
    ) -> OperatorProcess:
        # Leader election is on, as in a cluster, with the Lease in the test's namespace so that tests
        # running side by side do not compete for one; a fresh Lease is taken at once. With
        # standby=True, start() returns once the process campaigns (another one holds the Lease).
        args = ["--namespace", namespace, "--ca-bundle", str(ca_bundle), "--health-flush-interval", "0.5s"]
        args += ["--leader-election-namespace", namespace]
        if allow_loopback:
            args += ["--allow-cidr", "127.0.0.0/8"]
        proc = OperatorProcess(
            kubeconfig or cluster.kubeconfig,  # type: ignore[attr-defined]
            [*args, *extra],
            tmp_path / f"operator-{len(started)}.log",
            ready_line="campaigning for Lease" if standby else "delivering",
            env=env,
            wrapper=wrapper,
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
