"""The thin async edge to the Kubernetes API: only the calls the operator makes.

Plain JSON over aiohttp (already a kopf dependency): objects go in and come out as
dicts exactly as the API serves them. A generated client library would add ~65 MB of
imported models and per-object (de)serialisation cost for the dozen calls made here.

Credentials come from :mod:`huskies_agent.k8s.credentials` (the same resolution kopf's login uses).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from huskies_agent.backoff import Backoff
from huskies_agent.k8s import naming
from huskies_agent.k8s.credentials import Credentials, resolve
from huskies_agent.k8s.errors import (
    ApiError,
    ApiException,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    ServerError,
    TooManyRequests,
    error_for,
    is_conflict,
    is_not_found,
    should_retry,
)

log = logging.getLogger(__name__)

__all__ = [
    "ApiError", "ApiException", "Conflict", "Connection", "Forbidden", "Gone", "Invalid", "Kube", "NotFound",
    "RetryPolicy", "ServerError", "TooManyRequests", "connect", "is_conflict", "is_not_found",
]

@dataclass
class Connection:
    server: str
    session: aiohttp.ClientSession
    ssl_context: ssl.SSLContext | bool
    credentials: Credentials
    basic: aiohttp.BasicAuth | None = None
    #: Private directory holding credentials decoded from kubeconfig ``*-data`` fields.
    scratch: Path | None = None

    def headers(self) -> dict[str, str]:
        token = self.credentials.bearer_token()  # re-read: rotated ServiceAccount tokens keep working
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def close(self) -> None:
        await self.session.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _pem_file(data: str, name: str, directory: Path) -> str:
    path = directory / name
    path.write_bytes(base64.b64decode(data))
    path.chmod(0o600)
    return path.as_posix()


def ssl_context(creds: Credentials, scratch: Path) -> ssl.SSLContext | bool:
    """TLS settings for ``creds``; ``*-data`` fields are written to files in ``scratch`` first."""
    if creds.insecure:
        ctx: ssl.SSLContext | bool = False
    else:
        ctx = ssl.create_default_context()
        if creds.ca_data:
            ctx.load_verify_locations(cafile=_pem_file(creds.ca_data, "ca.crt", scratch))
        elif creds.ca_path:
            ctx.load_verify_locations(cafile=creds.ca_path)
    cert = _pem_file(creds.cert_data, "client.crt", scratch) if creds.cert_data else creds.cert_path
    key = _pem_file(creds.key_data, "client.key", scratch) if creds.key_data else creds.key_path
    if cert and key:
        if not isinstance(ctx, ssl.SSLContext):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(cert, key)
    return ctx


async def connect(kubeconfig: str | None = None, *, credentials: Credentials | None = None) -> Connection:
    """A connection with ``credentials``, else those :func:`~huskies_agent.k8s.credentials.resolve` finds."""
    creds = credentials or resolve(kubeconfig)
    session_kwargs: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=60, sock_connect=10)}
    scratch = Path(tempfile.mkdtemp(prefix="huskies-kube-"))
    try:
        ctx = ssl_context(creds, scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    basic = aiohttp.BasicAuth(creds.username, creds.password or "") if creds.username else None
    return Connection(creds.server, aiohttp.ClientSession(**session_kwargs), ctx, credentials=creds, basic=basic,
                      scratch=scratch)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently :meth:`Kube.request` repeats a call :func:`should_retry` allows."""

    #: Tries in all, the first included (1: never retry).
    attempts: int = 4
    minimum: float = 0.2
    maximum: float = 5.0
    #: A longer ``Retry-After`` is waited for only this long before the next try.
    max_retry_after: float = 30.0


class Kube:
    """The operator's API calls in one namespace."""

    def __init__(
        self, connection: Connection, namespace: str, *, retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_error: Callable[[str, int | str], None] | None = None,
    ) -> None:
        self.connection = connection
        #: Told of every failed call, retried or not: (verb, HTTP status or ``"connection"``).
        #: The operator counts them in a metric; this layer does not know about metrics.
        self.on_error = on_error
        self.namespace = namespace
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        ns = quote(namespace, safe="")
        self._storyjobs = f"/apis/{naming.GROUP}/{naming.VERSION}/namespaces/{ns}/{naming.PLURAL}"
        self._jobs = f"/apis/batch/v1/namespaces/{ns}/jobs"
        self._pods = f"/api/v1/namespaces/{ns}/pods"
        self._leases = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        self._configmaps = f"/api/v1/namespaces/{ns}/configmaps"
        self._events = f"/api/v1/namespaces/{ns}/events"

    async def close(self) -> None:
        await self.connection.close()

    # ------------------------------------------------------------------ transport
    async def request(
        self, method: str, path: str, body: Any = None, *, params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call; the decoded JSON answer, or the typed :class:`ApiError` for the status.

        Throttling (429), and for reads also server errors and lost connections, are retried with
        the package's backoff, waiting at least what ``Retry-After`` asks (see
        :mod:`huskies_agent.k8s.errors` for which calls and why).
        """
        policy = self.retry
        backoff = Backoff(policy.minimum, policy.maximum)
        for attempt in range(1, max(1, policy.attempts) + 1):
            try:
                return await self._request_once(method, path, body, params, content_type)
            except ApiError as exc:
                self._count(method, exc.status)
                if attempt >= policy.attempts or not should_retry(method, exc):
                    raise
                failure: BaseException = exc
                delay = backoff.next_delay(min(exc.retry_after or 0.0, policy.max_retry_after))
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                self._count(method, "connection")
                if attempt >= policy.attempts or not should_retry(method, None):
                    raise
                failure = exc
                delay = backoff.next_delay()
            log.debug("%s %s failed (%s); try %d of %d in %.2fs", method, path, failure or type(failure).__name__,
                      attempt + 1, policy.attempts, delay)
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _count(self, method: str, code: int | str) -> None:
        if self.on_error is not None:
            try:
                self.on_error(method, code)
            except Exception:  # a metric must never break an API call
                log.debug("error hook failed", exc_info=True)

    async def _request_once(
        self, method: str, path: str, body: Any, params: Mapping[str, Any] | None, content_type: str,
    ) -> Any:
        c = self.connection
        url = c.server + path + (("?" + urlencode(params)) if params else "")
        headers = {"Accept": "application/json", **c.headers()}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with c.session.request(method, url, data=data, headers=headers, ssl=c.ssl_context,
                                     auth=c.basic) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise error_for(resp.status, resp.reason or "", text, method, path, resp.headers.get("Retry-After"))
            return json.loads(text) if text else None

    # ------------------------------------------------------------------ StoryJobs
    async def create_storyjob(self, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", self._storyjobs, body)
        return result

    async def get_storyjob(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"{self._storyjobs}/{name}")
        return result

    async def list_storyjobs(self, selector: str) -> list[dict[str, Any]]:
        data = await self.request("GET", self._storyjobs, params={"labelSelector": selector} if selector else None)
        return list(data.get("items") or [])

    async def patch_storyjob_status(self, name: str, status: Mapping[str, Any]) -> None:
        await self.request("PATCH", f"{self._storyjobs}/{name}/status", {"status": dict(status)},
                           content_type="application/merge-patch+json")

    async def delete_storyjob(self, name: str) -> None:
        await self.request("DELETE", f"{self._storyjobs}/{name}", {"propagationPolicy": "Background"})

    # ------------------------------------------------------------------ Jobs and pods
    async def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", self._jobs, body)
        return result

    async def get_job(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"{self._jobs}/{name}")
        return result

    async def list_jobs(self, selector: str) -> list[dict[str, Any]]:
        data = await self.request("GET", self._jobs, params={"labelSelector": selector} if selector else None)
        return list(data.get("items") or [])

    async def delete_job(self, name: str, *, pod_grace_seconds: int | None = None) -> bool:
        """Delete a Job and its pods now; False when it was already gone.

        The pods keep their own termination grace period unless ``pod_grace_seconds`` says
        otherwise: the runner's publisher uses it to push a fenced checkpoint of the work in
        progress (docs/claims.md, I6).
        """
        gone = False
        try:
            await self.request("DELETE", f"{self._jobs}/{name}", {"propagationPolicy": "Background"})
        except NotFound:
            gone = True
        # Do not wait for the garbage collector: stop the pods at once.
        try:
            options = {} if pod_grace_seconds is None else {"gracePeriodSeconds": pod_grace_seconds}
            await self.request("DELETE", self._pods, options, params={"labelSelector": f"job-name={name}"})
        except NotFound:
            pass
        except ApiError as exc:
            log.warning("could not delete pods of job %s: %s", name, exc.message)
        return not gone

    async def create_pod(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a pod (only warm-slot placeholders: build pods come from their Jobs)."""
        result: dict[str, Any] = await self.request("POST", self._pods, body)
        return result

    async def delete_pod(self, name: str) -> bool:
        """Delete one pod now (grace period 0); False when it was already gone."""
        try:
            await self.request("DELETE", f"{self._pods}/{name}", {"gracePeriodSeconds": 0})
        except NotFound:
            return False
        return True

    async def list_pods(self, selector: str) -> list[dict[str, Any]]:
        data = await self.request("GET", self._pods, params={"labelSelector": selector} if selector else None)
        return list(data.get("items") or [])

    async def list_events(self, field_selector: str) -> list[dict[str, Any]]:
        """Events of the namespace matching ``field_selector`` (e.g. ``involvedObject.name=<pod>``)."""
        data = await self.request("GET", self._events,
                                  params={"fieldSelector": field_selector} if field_selector else None)
        return list(data.get("items") or [])

    # ------------------------------------------------------------------ Leases
    async def get_lease(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", f"{self._leases}/{name}")
            return result
        except NotFound:
            return None

    async def create_lease(self, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", self._leases, body)
        return result

    async def replace_lease(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("PUT", f"{self._leases}/{name}", body)
        return result

    # ------------------------------------------------------------------ ConfigMaps
    async def get_configmap(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", f"{self._configmaps}/{name}")
            return result
        except NotFound:
            return None

    async def create_configmap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", self._configmaps, body)
        return result

    # ------------------------------------------------------------------ Events
    async def post_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False,
        component: str = naming.APP_NAME,
    ) -> None:
        """Record a core/v1 Event on ``obj`` for humans (best effort: never raises)."""
        meta = obj.get("metadata") or {}
        name = meta.get("name", "unknown")
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": name,
                "namespace": self.namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.request("POST", self._events, body)
        except Exception as exc:  # events are informational only
            log.debug("could not post event %s on %s: %s", reason, name, exc)
