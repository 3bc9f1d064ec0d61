"""kopf handlers: Kubernetes watch events in, engine calls out.

Handlers are registered on a registry made per operator process (no module-level
registry), and do nothing unless this replica's engine is active (it holds the Lease).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from huskies_agent.engine import Engine
from huskies_agent.k8s import credentials, naming
from huskies_agent.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class EngineSlot:
    """Where handlers find the engine once this replica leads (``None`` before)."""

    engine: Engine | None = None


def build_registry(settings: Settings, slot: EngineSlot) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    ours = {
        "app.kubernetes.io/managed-by": naming.APP_NAME,
        "app.kubernetes.io/instance": settings.instance,
    }

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # The same resolution as the API client's connect(), so watches and writes reach one cluster.
        return credentials.to_kopf(credentials.resolve())

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # the engine posts its own Events on StoryJobs
        settings.scanning.disabled = True  # no cluster-wide CRD/namespace scanning (least privilege)
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 30
        # Filter on the server, not only in the handlers: otherwise every pod and Job of the
        # namespace (another install's thousand Jobs, say) is listed, streamed, decoded and
        # given a kopf worker here, costing start-up time, memory and idle CPU.
        selector = ",".join(f"{key}={value}" for key, value in sorted(ours.items()))
        for resource in (("batch", "v1", "jobs"), ("", "v1", "pods")):
            settings.watching.label_selectors[resource] = selector

    @kopf.on.event("batch", "v1", "jobs", labels=ours, registry=registry)
    async def job_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        engine = slot.engine
        if engine is not None:
            await engine.on_job_event(str(event.get("type") or ""), dict(body))

    @kopf.on.event("", "v1", "pods", labels=ours, registry=registry)
    async def pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        engine = slot.engine
        if engine is not None:
            await engine.on_pod_event(str(event.get("type") or ""), dict(body))

    return registry
