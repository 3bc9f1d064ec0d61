"""Tiny stdlib HTTPS client for the control plane's own bootstrapping (no Kubernetes client needed).

Failed calls raise the runtime package's typed errors (:mod:`huskies_agent.k8s.errors`), so tests
catch the same ``NotFound``/``Conflict`` whichever client they used.
"""

from __future__ import annotations

import http.client
import json
import ssl
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from huskies_agent.k8s.errors import ApiError, error_for

__all__ = ["ApiError", "AdminClient", "probe"]


def _error(method: str, path: str, status: int, body: bytes) -> ApiError:
    """The runtime package's typed error for this answer (NotFound, Conflict, ServerError...)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return error_for(status, reason, body.decode("utf-8", "replace"), method, path)


def _connection(url: str, context: ssl.SSLContext | None, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
    return http.client.HTTPConnection(host, parts.port, timeout=timeout)


def probe(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> tuple[int, str] | None:
    """GET ``url``; return (status, body) or None when nothing answers."""
    parts = urlsplit(url)
    conn = _connection(url, context, timeout)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def insecure_context() -> ssl.SSLContext:
    """For loopback health probes of components with self-signed serving certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class AdminClient:
    """JSON requests to kube-apiserver with a client certificate."""

    def __init__(self, server: str, *, ca: str, cert: str, key: str, timeout: float = 15.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=ca)
        self.context.load_cert_chain(cert, key)

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        conn = _connection(self.server, self.context, self.timeout)
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def json(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (200, 201),
        content_type: str = "application/json",
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        status, raw = self.raw(method, path, data, content_type=content_type)
        if status not in ok:
            raise _error(method, path, status, raw)
        return json.loads(raw) if raw else None

    def get_or_none(self, path: str) -> Any:
        status, raw = self.raw("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise _error("GET", path, status, raw)
        return json.loads(raw)

    def create_if_missing(self, collection: str, obj: dict[str, Any]) -> None:
        """POST ``obj`` to ``collection``; an AlreadyExists answer (409) is fine."""
        self.json("POST", collection, obj, ok=(200, 201, 202, 409))
