"""Credentials for the API server: the in-cluster service account, or the current kubeconfig context.

Read here rather than by the ``kubernetes`` package, whose import costs the operator about 25 MB
of memory for a few fields. An ``exec`` plugin is run here too (the ExecCredential protocol, as
client-go runs it), and run again by the API client before the token it gave expires or after a
401. Kubeconfigs whose user has an ``auth-provider`` still go through the ``kubernetes`` package
(see ``needs_client_library``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SA_TOKEN_PATH = SA_DIR / "token"


class ConfigError(Exception):
    """No usable credentials: the message says what was looked at."""


@dataclass(frozen=True)
class ExecPlugin:
    """A kubeconfig user's ``exec`` section: a command that prints an ExecCredential."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"


@dataclass(frozen=True)
class ExecResult:
    token: str | None
    expires_at: float | None  # epoch seconds; None: valid until a 401 says otherwise
    cert_data: bytes | None = None
    key_data: bytes | None = None


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_path: str | None
    verify: bool
    cert_path: str | None
    key_path: str | None
    token: str | None
    token_path: str | None
    default_namespace: str | None
    exec_plugin: ExecPlugin | None = None  # run again for a new token (see KubeClient)
    expires_at: float | None = None  # of ``token``, when an exec plugin said so


def in_cluster_available(sa_dir: Path = SA_DIR) -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (sa_dir / "token").is_file()


def in_cluster(sa_dir: Path = SA_DIR) -> Credentials:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    ca = sa_dir / "ca.crt"
    namespace = sa_dir / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_path=str(ca) if ca.is_file() else None,
        verify=True,
        cert_path=None,
        key_path=None,
        token=(sa_dir / "token").read_text().strip(),
        token_path=str(sa_dir / "token"),
        default_namespace=namespace.read_text().strip() if namespace.is_file() else None,
    )


def kubeconfig_paths() -> list[Path]:
    value = os.environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    return paths or [Path("~/.kube/config").expanduser()]


@dataclass(frozen=True)
class _Context:
    cluster: dict[str, Any]
    user: dict[str, Any]
    namespace: str | None
    base: Path  # relative file names in the kubeconfig are relative to its folder


def _current_context(paths: list[Path]) -> _Context:
    """The current context, merged across the files the way kubectl does: the first of each name wins."""
    clusters: dict[str, tuple[dict[str, Any], Path]] = {}
    users: dict[str, tuple[dict[str, Any], Path]] = {}
    contexts: dict[str, dict[str, Any]] = {}
    current = ""
    found = False
    for path in paths:
        if not path.is_file():
            continue
        found = True
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"kubeconfig {path} is not a mapping")
        current = current or str(doc.get("current-context") or "")
        for entry in doc.get("clusters") or ():
            clusters.setdefault(str(entry.get("name")), (entry.get("cluster") or {}, path.parent))
        for entry in doc.get("users") or ():
            users.setdefault(str(entry.get("name")), (entry.get("user") or {}, path.parent))
        for entry in doc.get("contexts") or ():
            contexts.setdefault(str(entry.get("name")), entry.get("context") or {})
    where = os.pathsep.join(str(p) for p in paths)
    if not found:
        raise ConfigError(f"no in-cluster service account and no kubeconfig at {where}")
    if not current or current not in contexts:
        raise ConfigError(f"kubeconfig {where}: current-context {current!r} is not defined")
    context = contexts[current]
    cluster_name, user_name = str(context.get("cluster", "")), str(context.get("user", ""))
    if cluster_name not in clusters:
        raise ConfigError(f"kubeconfig {where}: context {current!r} names an undefined cluster {cluster_name!r}")
    cluster, base = clusters[cluster_name]
    user = users.get(user_name, ({}, base))[0]
    return _Context(cluster=cluster, user=user, namespace=context.get("namespace"), base=base)


def needs_client_library(paths: list[Path] | None = None) -> bool:
    """True when the current context's user authenticates through an auth-provider."""
    if in_cluster_available():
        return False
    try:
        user = _current_context(paths or kubeconfig_paths()).user
    except ConfigError:
        return False
    return bool(user.get("auth-provider"))


def exec_plugin(section: dict[str, Any], base: Path) -> ExecPlugin:
    command = str(section.get("command") or "")
    if not command:
        raise ConfigError("the kubeconfig user's exec section has no command")
    if os.sep in command and not os.path.isabs(command):
        command = str(base / command)  # as client-go: relative to the kubeconfig's folder
    env = tuple((str(e.get("name")), str(e.get("value", ""))) for e in section.get("env") or () if e.get("name"))
    return ExecPlugin(
        command=command,
        args=tuple(str(a) for a in section.get("args") or ()),
        env=env,
        api_version=str(section.get("apiVersion") or ExecPlugin.api_version),
    )


def _exec_call(plugin: ExecPlugin) -> tuple[list[str], dict[str, str]]:
    info = {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    env = {**os.environ, **dict(plugin.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
    command = shutil.which(plugin.command, path=env.get("PATH")) or plugin.command
    return [command, *plugin.args], env


def parse_exec_output(output: bytes, command: str) -> ExecResult:
    """The ExecCredential a plugin printed (client.authentication.k8s.io v1 or v1beta1)."""
    try:
        doc = json.loads(output)
        status = doc["status"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"exec plugin {command} printed no ExecCredential with a status") from exc
    expires_at = None
    if status.get("expirationTimestamp"):
        stamp = str(status["expirationTimestamp"]).replace("Z", "+00:00")
        try:
            expires_at = dt.datetime.fromisoformat(stamp).timestamp()
        except ValueError as exc:
            raise ConfigError(f"exec plugin {command}: unreadable expirationTimestamp") from exc
    cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
    token = status.get("token")
    if not token and not (cert and key):
        raise ConfigError(f"exec plugin {command} returned neither a token nor a client certificate")
    return ExecResult(
        token=str(token) if token else None,
        expires_at=expires_at,
        cert_data=str(cert).encode() if cert else None,
        key_data=str(key).encode() if key else None,
    )


def run_exec_plugin(plugin: ExecPlugin) -> ExecResult:
    argv, env = _exec_call(plugin)
    try:
        done = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"exec plugin {plugin.command} could not run: {exc}") from exc
    if done.returncode != 0:
        raise ConfigError(f"exec plugin {plugin.command} exited with {done.returncode}")
    return parse_exec_output(done.stdout, plugin.command)


async def run_exec_plugin_async(plugin: ExecPlugin) -> ExecResult:
    """The same, without blocking the event loop."""
    argv, env = _exec_call(plugin)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"exec plugin {plugin.command} could not run: {exc}") from exc
    if proc.returncode != 0:
        raise ConfigError(f"exec plugin {plugin.command} exited with {proc.returncode}")
    return parse_exec_output(output, plugin.command)


# Inline data written to files, by content: credentials are loaded again at every (re-)login.
_written: dict[bytes, str] = {}


def _path(value: Any, base: Path) -> str:
    path = Path(str(value)).expanduser()
    return str(path if path.is_absolute() else base / path)


def _file_or_data(section: dict[str, Any], key: str, base: Path) -> str | None:
    """A path for ``key`` (a file name) or ``key-data`` (base64, written once to a private temporary file)."""
    data = section.get(f"{key}-data")
    if data:
        content = base64.b64decode(data)
        name = _written.get(content)
        if name is None or not os.path.exists(name):
            handle, name = tempfile.mkstemp(prefix="webhook-operator-", suffix=f"-{key}")
            with os.fdopen(handle, "wb") as out:
                out.write(content)
            os.chmod(name, stat.S_IRUSR | stat.S_IWUSR)
            _written[content] = name
        return name
    value = section.get(key)
    return _path(value, base) if value else None


def from_kubeconfig(paths: list[Path] | None = None) -> Credentials:
    ctx = _current_context(paths or kubeconfig_paths())
    server = str(ctx.cluster.get("server") or "").rstrip("/")
    if not server:
        raise ConfigError("the current kubeconfig context's cluster has no server")
    token = ctx.user.get("token")
    token_path = _path(ctx.user["tokenFile"], ctx.base) if ctx.user.get("tokenFile") else None
    if token_path and not token:
        token = Path(token_path).read_text().strip()
    cert_path = _file_or_data(ctx.user, "client-certificate", ctx.base)
    key_path = _file_or_data(ctx.user, "client-key", ctx.base)
    plugin, expires_at = None, None
    if ctx.user.get("exec"):
        plugin = exec_plugin(dict(ctx.user["exec"]), ctx.base)
        result = run_exec_plugin(plugin)
        token, expires_at = result.token, result.expires_at
        if result.cert_data and result.key_data:
            # A client certificate from the plugin is read once, at (re-)login.
            cert_path = _file_or_data({"c-data": base64.b64encode(result.cert_data)}, "c", ctx.base)
            key_path = _file_or_data({"k-data": base64.b64encode(result.key_data)}, "k", ctx.base)
    return Credentials(
        server=server,
        ca_path=_file_or_data(ctx.cluster, "certificate-authority", ctx.base),
        verify=not ctx.cluster.get("insecure-skip-tls-verify", False),
        cert_path=cert_path,
        key_path=key_path,
        token=str(token) if token else None,
        token_path=token_path,
        default_namespace=ctx.namespace,
        exec_plugin=plugin,
        expires_at=expires_at,
    )


def through_client_library() -> Credentials:
    """Auth-providers: the ``kubernetes`` package runs them."""
    import kubernetes

    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(client_configuration=config)
    auth = (config.api_key or {}).get("authorization") or (config.api_key or {}).get("BearerToken")
    token = auth.split(" ", 1)[1] if auth and auth.startswith("Bearer ") else auth
    return Credentials(
        server=config.host.rstrip("/"),
        ca_path=config.ssl_ca_cert,
        verify=bool(config.verify_ssl),
        cert_path=config.cert_file,
        key_path=config.key_file,
        token=token,
        token_path=None,
        default_namespace=None,
    )


def load_credentials() -> Credentials:
    if in_cluster_available():
        return in_cluster()
    if needs_client_library():
        return through_client_library()
    return from_kubeconfig()
