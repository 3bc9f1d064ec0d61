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
from huskies_agent.engine.scaleup import REASONS as AUTOSCALER_REASONS
from huskies_agent.k8s import credentials, naming
from huskies_agent.settings import Settings

log = logging.getLogger(__name__)


class EventsOnly(kopf.DiffBaseStorage):
    """kopf's "last handled state" for an operator with event handlers only: none.

    For every watch event kopf deep-copies the object into an "essence" and diffs it with
    the stored one, which only change handlers (``on.create``/``on.update``/``on.field``)
    use. With 1,000 Jobs starting that was a quarter of the operator's CPU (py-spy in
    bench/bench_operator.py). :func:`build_registry` refuses change handlers, so none of
    them can silently see no changes.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


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
        settings.persistence.diffbase_storage = EventsOnly()
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

    def autoscaler_verdict(body: kopf.Body, **_: Any) -> bool:
        # Only Events about Pods with a node autoscaler's reasons reach the engine (a cheap filter:
        # Events carry no labels, so the watch covers every Event of the namespace).
        involved = body.get("involvedObject") or {}
        return involved.get("kind") == "Pod" and body.get("reason") in AUTOSCALER_REASONS

    @kopf.on.event("", "v1", "events", when=autoscaler_verdict, registry=registry)
    async def autoscaler_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        engine = slot.engine
        if engine is not None:
            await engine.on_autoscaler_event(str(event.get("type") or ""), dict(body))

    if registry._changing.get_all_handlers() or registry._spawning.get_all_handlers():
        raise AssertionError("change handlers or daemons need kopf's diff base, which EventsOnly turns off")
    return registry
