"""With WEBHOOK_OPERATOR_CHAOS=1 (make chaos) the fault suite runs on a control plane of its own
(.cluster-chaos/): its scenarios stop the API server and etcd, which must not disturb other test
runs sharing .cluster-test/. The short scenarios that make test runs use the shared one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devcluster.controlplane import ControlPlane
from tests.conftest import ROOT, Cluster, _install_crds

CHAOS = os.environ.get("WEBHOOK_OPERATOR_CHAOS") == "1"


@pytest.fixture(scope="session")
def plane() -> Iterator[ControlPlane]:
    if not CHAOS:
        pytest.skip(
            "stopping control-plane processes needs the dedicated plane of make chaos (WEBHOOK_OPERATOR_CHAOS=1)"
        )
    plane = ControlPlane(ROOT / ".cluster-chaos")
    plane.up()
    _install_crds(plane.kubeconfig)
    yield plane
    if not os.environ.get("WEBHOOK_OPERATOR_KEEP_TEST_CLUSTER"):
        plane.down(quiet=True)


if CHAOS:

    @pytest.fixture(scope="session")
    def cluster(plane: ControlPlane) -> Cluster:
        return Cluster("local", plane.kubeconfig)
