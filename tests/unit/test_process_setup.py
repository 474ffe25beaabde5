"""What `webhook-operator run` sets up in its process before kopf starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

PROBE = """
import sys, asyncio.sslproto
from webhook_operator.cli import keep_unused_clients_out, smaller_tls_read_buffers
keep_unused_clients_out()
smaller_tls_read_buffers()
import kopf, webhook_operator.handlers, webhook_operator.runtime
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'pykube') and sys.modules[m] is not None)
print(loaded, asyncio.sslproto.SSLProtocol.max_size)
"""


def kubeconfig(tmp_path: Path, user: dict[str, object]) -> Path:
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "current-context": "dev",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return path


def probe(path: Path) -> str:
    env = {**os.environ, "KUBECONFIG": str(path)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout


def test_the_operator_loads_no_kubernetes_client_and_uses_small_tls_read_buffers(tmp_path: Path) -> None:
    assert probe(kubeconfig(tmp_path, {"token": "t"})).strip() == "[] 32768"


def test_an_exec_plugin_kubeconfig_needs_no_kubernetes_package(tmp_path: Path) -> None:
    # kubeconfig.py runs exec plugins itself; only auth-providers still go through the package.
    assert probe(kubeconfig(tmp_path, {"exec": {"command": "true"}})).strip() == "[] 32768"


def test_an_auth_provider_kubeconfig_keeps_the_kubernetes_package_available(tmp_path: Path) -> None:
    script = PROBE + "import kubernetes.config\nprint('kubernetes importable')\n"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path, {"auth-provider": {"name": "oidc"}}))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert "kubernetes importable" in out


def test_the_operator_loads_no_certificate_library_unless_it_makes_a_certificate(tmp_path: Path) -> None:
    script = PROBE + (
        "import webhook_operator.ingress.server\n"
        "print('cryptography.x509' in sys.modules)\n"
        "from webhook_operator.ingress.tls import self_signed\n"
        f"self_signed(__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "print('cryptography.x509' in sys.modules)\n"
    )
    env = {**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path, {"token": "t"}))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[1:] == ["False", "True"]


def test_the_operator_runs_on_uvloop() -> None:
    # A dependency on Linux: the event loop, sockets and TLS in C (a sixth to a quarter less CPU per delivery).
    import uvloop

    from webhook_operator.cli import loop_factory

    factory = loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
