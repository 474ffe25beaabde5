"""Credentials for the API server: the in-cluster service account, or the current kubeconfig context.

Read here rather than by the ``kubernetes`` package, whose import costs the operator about 25 MB
of memory for a few fields. Kubeconfigs whose user runs an ``exec`` plugin or an
``auth-provider`` still go through the ``kubernetes`` package (see ``needs_client_library``).
"""

from __future__ import annotations

import base64
import os
import stat
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
class Credentials:
    server: str
    ca_path: str | None
    verify: bool
    cert_path: str | None
    key_path: str | None
    token: str | None
    token_path: str | None
    default_namespace: str | None


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
    """True when the current context's user authenticates through an exec plugin or an auth-provider."""
    if in_cluster_available():
        return False
    try:
        user = _current_context(paths or kubeconfig_paths()).user
    except ConfigError:
        return False
    return bool(user.get("exec") or user.get("auth-provider"))


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
    return Credentials(
        server=server,
        ca_path=_file_or_data(ctx.cluster, "certificate-authority", ctx.base),
        verify=not ctx.cluster.get("insecure-skip-tls-verify", False),
        cert_path=_file_or_data(ctx.user, "client-certificate", ctx.base),
        key_path=_file_or_data(ctx.user, "client-key", ctx.base),
        token=str(token) if token else None,
        token_path=token_path,
        default_namespace=ctx.namespace,
    )


def through_client_library() -> Credentials:
    """Exec plugins and auth-providers: the ``kubernetes`` package runs them."""
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
