"""The thin async edge to the Kubernetes API: only the calls the operator makes.

Objects go in and come out as plain dicts (camelCase, as the API serves them).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from huskies_agent.k8s import naming

log = logging.getLogger(__name__)

__all__ = ["ApiException", "Kube", "connect", "is_conflict", "is_not_found"]


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 404


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 409


async def connect(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from ``kubeconfig``, ``$KUBECONFIG``/~/.kube/config, or in-cluster credentials."""
    configuration = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Kube:
    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    def _dict(self, obj: Any) -> dict[str, Any]:
        if isinstance(obj, dict):
            return obj
        data = self.api_client.sanitize_for_serialization(obj)
        assert isinstance(data, dict)
        return data

    async def close(self) -> None:
        await self.api_client.close()

    # ------------------------------------------------------------------ StoryJobs
    async def create_storyjob(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._dict(await self.custom.create_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, dict(body)))

    async def get_storyjob(self, name: str) -> dict[str, Any]:
        return self._dict(await self.custom.get_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, name))

    async def list_storyjobs(self, selector: str) -> list[dict[str, Any]]:
        data = await self.custom.list_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, label_selector=selector)
        return list(self._dict(data).get("items", []))

    async def patch_storyjob_status(self, name: str, status: Mapping[str, Any]) -> None:
        await self.custom.patch_namespaced_custom_object_status(
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, name, {"status": dict(status)},
            _content_type="application/merge-patch+json")

    async def delete_storyjob(self, name: str) -> None:
        await self.custom.delete_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.namespace, naming.PLURAL, name,
            propagation_policy="Background")

    # ------------------------------------------------------------------ Jobs and pods
    async def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._dict(await self.batch.create_namespaced_job(self.namespace, dict(body)))

    async def get_job(self, name: str) -> dict[str, Any]:
        return self._dict(await self.batch.read_namespaced_job(name, self.namespace))

    async def list_jobs(self, selector: str) -> list[dict[str, Any]]:
        data = self._dict(await self.batch.list_namespaced_job(self.namespace, label_selector=selector))
        return list(data.get("items", []))

    async def delete_job(self, name: str, *, pod_grace_seconds: int = 5) -> bool:
        """Delete a Job and its pods now; False when it was already gone."""
        gone = False
        try:
            await self.batch.delete_namespaced_job(
                name, self.namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
            gone = True
        # Do not wait for the garbage collector: stop the pods at once.
        try:
            await self.core.delete_collection_namespaced_pod(
                self.namespace, label_selector=f"job-name={name}", grace_period_seconds=pod_grace_seconds)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete pods of job %s: %s", name, exc.reason)
        return not gone

    async def list_pods(self, selector: str) -> list[dict[str, Any]]:
        data = self._dict(await self.core.list_namespaced_pod(self.namespace, label_selector=selector))
        return list(data.get("items", []))

    # ------------------------------------------------------------------ Leases
    async def get_lease(self, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(await self.coordination.read_namespaced_lease(name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create_lease(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._dict(await self.coordination.create_namespaced_lease(self.namespace, dict(body)))

    async def replace_lease(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._dict(await self.coordination.replace_namespaced_lease(name, self.namespace, dict(body)))

    # ------------------------------------------------------------------ ConfigMaps
    async def get_configmap(self, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(await self.core.read_namespaced_config_map(name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create_configmap(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._dict(await self.core.create_namespaced_config_map(self.namespace, dict(body)))

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
            await self.core.create_namespaced_event(self.namespace, body)
        except Exception as exc:  # events are informational only
            log.debug("could not post event %s on %s: %s", reason, name, exc)
