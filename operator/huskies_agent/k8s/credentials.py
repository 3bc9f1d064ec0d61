"""Where the operator's Kubernetes credentials come from: decided once, in one order, for every client.

Both clients of the operator — the aiohttp edge (:func:`huskies_agent.k8s.api.connect`) and kopf's
watches (the login handler in :mod:`huskies_agent.handlers`) — call :func:`resolve`, so they always
talk to the same cluster as the same user. The order:

1. an explicit kubeconfig (``--kubeconfig``; the operator command also exports it as ``$KUBECONFIG``),
2. ``$KUBECONFIG`` (its first path; merging several files is not supported),
3. the pod's ServiceAccount (token file present and ``$KUBERNETES_SERVICE_HOST`` set),
4. ``~/.kube/config``.

A kubeconfig given explicitly wins over in-cluster credentials: an operator pod started with a
kubeconfig for another cluster watches and writes that cluster, never its own. Supported kubeconfig
users: client certificates (paths or ``*-data``), bearer tokens, basic auth; exec and
auth-provider plugins raise :class:`CredentialsError`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import kopf

__all__ = ["SA_DIR", "Credentials", "CredentialsError", "Source", "choose_source", "resolve", "to_kopf"]

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class CredentialsError(RuntimeError):
    """No usable credentials, or a kubeconfig this client cannot use; the message says which."""


class Source(enum.Enum):
    EXPLICIT = "explicit kubeconfig"
    KUBECONFIG_ENV = "$KUBECONFIG"
    IN_CLUSTER = "in-cluster ServiceAccount"
    HOME = "~/.kube/config"


@dataclass(frozen=True)
class Credentials:
    """One cluster endpoint and one user, as found in the source (``*_data`` stay base64)."""

    source: Source
    origin: str  # the kubeconfig file or the ServiceAccount directory
    server: str
    ca_path: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    cert_path: str | None = None
    cert_data: str | None = None
    key_path: str | None = None
    key_data: str | None = None
    token: str | None = None
    #: Re-read on every use, so rotated ServiceAccount tokens keep working.
    token_path: str | None = None
    username: str | None = None
    password: str | None = None
    namespace: str | None = None

    def bearer_token(self) -> str | None:
        if self.token_path is not None:
            try:
                return Path(self.token_path).read_text().strip() or None
            except OSError:
                return self.token
        return self.token


def in_cluster_available(environ: Mapping[str, str], sa_dir: Path) -> bool:
    return (sa_dir / "token").is_file() and bool(environ.get("KUBERNETES_SERVICE_HOST"))


def choose_source(
    explicit: str | None, environ: Mapping[str, str], sa_dir: Path, home: Path,
) -> tuple[Source, str]:
    """The decision alone: which source wins, and its path (file or directory)."""
    if explicit:
        return Source.EXPLICIT, explicit
    env_path = next((p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p.strip()), "")
    if env_path:
        return Source.KUBECONFIG_ENV, env_path
    if in_cluster_available(environ, sa_dir):
        return Source.IN_CLUSTER, str(sa_dir)
    default = home / ".kube" / "config"
    if default.is_file():
        return Source.HOME, str(default)
    raise CredentialsError(
        "no Kubernetes credentials: pass --kubeconfig, set $KUBECONFIG, run in a pod with a "
        f"ServiceAccount token, or create {default}"
    )


def resolve(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    sa_dir: Path | None = None,
    home: Path | None = None,
) -> Credentials:
    """The operator's credentials (see the module docstring for the order)."""
    environ = os.environ if environ is None else environ
    sa_dir = SA_DIR if sa_dir is None else sa_dir
    home = Path(environ.get("HOME") or Path.home()) if home is None else home
    source, origin = choose_source(explicit, environ, sa_dir, home)
    if source is Source.IN_CLUSTER:
        return from_service_account(Path(origin), environ)
    return from_kubeconfig(Path(origin).expanduser(), source)


def from_service_account(sa_dir: Path, environ: Mapping[str, str]) -> Credentials:
    host = environ["KUBERNETES_SERVICE_HOST"]
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    namespace_file = sa_dir / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    ca = sa_dir / "ca.crt"
    return Credentials(
        source=Source.IN_CLUSTER, origin=str(sa_dir), server=f"https://{host}:{port}",
        ca_path=str(ca) if ca.is_file() else None, token_path=str(sa_dir / "token"), namespace=namespace,
    )


def from_kubeconfig(path: Path, source: Source = Source.EXPLICIT) -> Credentials:
    """The current context of one kubeconfig file; relative file names are taken from its directory."""
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CredentialsError(f"kubeconfig {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise CredentialsError(f"kubeconfig {path}: not a mapping")
    name = config.get("current-context")
    if not name:
        raise CredentialsError(f"kubeconfig {path}: no current-context")
    by_name = {kind: {item.get("name"): item.get(kind[:-1]) or {} for item in config.get(kind) or []}
               for kind in ("contexts", "clusters", "users")}
    context: dict[str, Any] = by_name["contexts"].get(name) or {}
    cluster: dict[str, Any] = by_name["clusters"].get(context.get("cluster")) or {}
    user: dict[str, Any] = by_name["users"].get(context.get("user")) or {}
    if not cluster.get("server"):
        raise CredentialsError(f"kubeconfig {path}: context {name!r} names no cluster with a server")
    if "exec" in user or "auth-provider" in user:
        raise CredentialsError(f"kubeconfig {path}: exec and auth-provider credentials are not supported")
    base = path.resolve().parent

    def file(key: str, where: dict[str, Any]) -> str | None:
        value = where.get(key)
        return str(base / str(value)) if value else None

    return Credentials(
        source=source, origin=str(path), server=str(cluster["server"]).rstrip("/"),
        ca_path=file("certificate-authority", cluster), ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_path=file("client-certificate", user), cert_data=user.get("client-certificate-data"),
        key_path=file("client-key", user), key_data=user.get("client-key-data"),
        token=user.get("token"), token_path=file("tokenFile", user),
        username=user.get("username"), password=user.get("password"),
        namespace=context.get("namespace"),
    )


def to_kopf(creds: Credentials) -> kopf.ConnectionInfo:
    """The same credentials as kopf's ConnectionInfo (kopf logs in again on a 401: a fresh token)."""
    import kopf

    return kopf.ConnectionInfo(
        server=creds.server,
        ca_path=None if creds.ca_data else creds.ca_path,
        ca_data=creds.ca_data,
        insecure=creds.insecure or None,
        certificate_path=None if creds.cert_data else creds.cert_path,
        certificate_data=creds.cert_data,
        private_key_path=None if creds.key_data else creds.key_path,
        private_key_data=creds.key_data,
        token=creds.bearer_token(),
        username=creds.username,
        password=creds.password,
        default_namespace=creds.namespace,
    )
