"""The API client's bearer token stays current: an exec plugin is run again before its token expires
or after a 401, a token file is read again after a 401. A real plugin process, a real HTTPS server."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp import web

from webhook_operator.kube import KubeClient
from webhook_operator.kubeconfig import from_kubeconfig

PLUGIN = """
import datetime, json, os, pathlib
counter = pathlib.Path(os.environ["COUNTER"])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
# TTL for the first token; later ones live an hour, so a renewal is never due again at once
# (expirationTimestamp has whole seconds: a second 61 s token could be inside its last minute already).
ttl = float(os.environ["TTL"]) if n == 1 else 3600.0
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ttl)
print(json.dumps({
    "apiVersion": info["apiVersion"],
    "kind": "ExecCredential",
    "status": {"token": f"tok-{n}", "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
}))
"""


class ApiServer:
    """Answers GET /api/v1/namespaces/x to a token in ``valid``, 401 otherwise; records the tokens seen."""

    def __init__(self) -> None:
        self.valid: set[str] = set()
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.seen.append(token)
        if token not in self.valid:
            body = {"kind": "Status", "status": "Failure", "reason": "Unauthorized", "message": "Unauthorized"}
            return web.json_response(body, status=401)
        return web.json_response({"kind": "Namespace", "metadata": {"name": "x"}})


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[ApiServer, str, Path]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server = ApiServer()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/x", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield server, f"https://127.0.0.1:{port}", ca_path
    await runner.cleanup()


def kubeconfig(tmp_path: Path, server: str, ca_path: Path, user: dict[str, Any]) -> Path:
    path = tmp_path / "kubeconfig"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "dev",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": str(ca_path)}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def exec_user(tmp_path: Path, ttl_s: float) -> dict[str, Any]:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
            "env": [{"name": "COUNTER", "value": str(tmp_path / "count")}, {"name": "TTL", "value": str(ttl_s)}],
            "interactiveMode": "Never",
        }
    }


async def test_an_exec_token_refused_with_401_is_renewed_and_the_request_made_again(
    api: tuple[ApiServer, str, Path], tmp_path: Path
) -> None:
    server, url, ca_path = api
    credentials = from_kubeconfig([kubeconfig(tmp_path, url, ca_path, exec_user(tmp_path, ttl_s=3600))])
    assert credentials.token == "tok-1" and credentials.exec_plugin is not None
    server.valid = {"tok-1"}
    kube = KubeClient(credentials)
    try:
        await kube.get("/api/v1/namespaces/x")
        await kube.get("/api/v1/namespaces/x")
        assert server.seen == ["tok-1", "tok-1"], "a token an hour from expiry is kept"
        server.valid = {"tok-2"}  # revoked early: the server says 401
        assert await kube.get("/api/v1/namespaces/x") == {"kind": "Namespace", "metadata": {"name": "x"}}
        assert server.seen[2:] == ["tok-1", "tok-2"]
        assert kube.token_renewals == 1
    finally:
        await kube.close()


async def test_an_exec_token_is_renewed_before_it_expires(api: tuple[ApiServer, str, Path], tmp_path: Path) -> None:
    server, url, ca_path = api
    # 61 s to live: within a second it is inside the minute before expiry, when client-go renews too.
    credentials = from_kubeconfig([kubeconfig(tmp_path, url, ca_path, exec_user(tmp_path, ttl_s=61))])
    server.valid = {"tok-1", "tok-2"}
    kube = KubeClient(credentials)
    try:
        await kube.get("/api/v1/namespaces/x")
        await asyncio.sleep(2.1)
        await asyncio.gather(*(kube.get("/api/v1/namespaces/x") for _ in range(5)))
        assert server.seen[0] == "tok-1"
        assert server.seen[1:] == ["tok-2"] * 5, "renewed once, before any request was refused"
        assert (tmp_path / "count").read_text() == "2"
    finally:
        await kube.close()


async def test_a_token_file_is_read_again_after_a_401(api: tuple[ApiServer, str, Path], tmp_path: Path) -> None:
    server, url, ca_path = api
    token_file = tmp_path / "token"
    token_file.write_text("sa-1\n")
    credentials = from_kubeconfig([kubeconfig(tmp_path, url, ca_path, {"tokenFile": str(token_file)})])
    server.valid = {"sa-1"}
    kube = KubeClient(credentials)
    try:
        await kube.get("/api/v1/namespaces/x")
        token_file.write_text("sa-2\n")  # kubelet rotated the projected token
        server.valid = {"sa-2"}
        await kube.get("/api/v1/namespaces/x")
        assert server.seen == ["sa-1", "sa-1", "sa-2"]
    finally:
        await kube.close()


def test_the_plugin_gets_the_exec_info_it_asks_for(tmp_path: Path) -> None:
    plugin = tmp_path / "echo.py"
    plugin.write_text(
        "import json, os\n"
        "info = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "print(json.dumps({'apiVersion': info['apiVersion'], 'kind': 'ExecCredential',"
        " 'status': {'token': info['apiVersion'] + '/' + str(info['spec']['interactive'])}}))\n"
    )
    user = {
        "exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable, "args": [str(plugin)]}
    }
    credentials = from_kubeconfig([kubeconfig(tmp_path, "https://127.0.0.1:1", tmp_path / "ca.pem", user)])
    assert credentials.token == "client.authentication.k8s.io/v1beta1/False"
    assert credentials.expires_at is None
    assert credentials.exec_plugin is not None and credentials.exec_plugin.args == (str(plugin),)
