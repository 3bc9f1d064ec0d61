"""Record when build pods and Karpenter nodes change state, by polling the API from a thread.

Every ``interval`` seconds the observer lists the pods of one namespace and all nodes, and keeps
the first time (``time.monotonic()``) it saw each transition. Polling (rather than a watch) keeps
it independent of the test's event loop; at the default 0.2 s the timings are good to ~0.2 s.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

from huskies_agent.k8s import naming
from huskies_agent_dev.devcluster import ApiError, ControlPlane
from huskies_agent_dev.devcluster._http import AdminClient

NODEPOOL_LABEL = "karpenter.sh/nodepool"
UNREGISTERED_TAINT = "karpenter.sh/unregistered"


@dataclass
class PodTimes:
    name: str
    story_id: str
    seen: float
    unschedulable: float | None = None
    scheduled: float | None = None
    node: str = ""
    running: float | None = None
    finished: float | None = None
    phase: str = ""
    #: deletionTimestamp seen while the pod had not finished (an eviction, a drain, a Job deletion).
    deleted_running: float | None = None
    gone: float | None = None


@dataclass
class NodeTimes:
    name: str
    seen: float
    nodepool: str
    instance_type: str
    ready: float | None = None
    deleting: float | None = None
    gone: float | None = None


class Observer:
    """Polls pods in ``namespace`` and all nodes; see the module doc."""

    def __init__(self, plane: ControlPlane, namespace: str, interval: float = 0.2) -> None:
        self.plane = plane
        self.namespace = namespace
        self.interval = interval
        self.pods: dict[str, PodTimes] = {}
        self.nodes: dict[str, NodeTimes] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Observer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        pki = self.plane.pki
        client = AdminClient(self.plane.server_url, ca=str(pki.ca.cert), cert=str(pki.admin.cert),
                             key=str(pki.admin.key), timeout=5.0)
        self.poll(client)
        self._thread = threading.Thread(target=self._run, args=(client,), name="autoscale-observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self, client: AdminClient) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll(client)
            except (ApiError, OSError, http.client.HTTPException, ValueError):
                self.errors += 1

    def poll(self, client: AdminClient) -> None:
        pods = client.json("GET", f"/api/v1/namespaces/{quote(self.namespace)}/pods")["items"]
        nodes = client.json("GET", "/api/v1/nodes")["items"]
        now = time.monotonic()
        with self._lock:
            for pod in pods:
                self._pod(pod, now)
            listed = {pod["metadata"]["name"] for pod in pods}
            for prec in self.pods.values():
                if prec.gone is None and prec.name not in listed:
                    prec.gone = now
            present = set()
            for node in nodes:
                present.add(node["metadata"]["name"])
                self._node(node, now)
            for rec in self.nodes.values():
                if rec.gone is None and rec.name not in present:
                    rec.gone = now

    def _pod(self, pod: dict[str, Any], now: float) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        rec = self.pods.get(meta["name"])
        if rec is None:
            story = (meta.get("annotations") or {}).get(naming.ANNOTATION_STORY_ID, "")
            rec = self.pods[meta["name"]] = PodTimes(meta["name"], story, now)
        scheduled = _condition(status, "PodScheduled")
        if rec.unschedulable is None and scheduled and scheduled.get("status") == "False" \
                and scheduled.get("reason") == "Unschedulable":
            rec.unschedulable = now
        if rec.scheduled is None and spec.get("nodeName"):
            rec.scheduled, rec.node = now, spec["nodeName"]
        phase = status.get("phase", "")
        rec.phase = phase
        if rec.running is None and phase in ("Running", "Succeeded", "Failed"):
            rec.running = now
        if rec.finished is None and phase in ("Succeeded", "Failed"):
            rec.finished = now
        if rec.deleted_running is None and rec.finished is None and meta.get("deletionTimestamp"):
            rec.deleted_running = now

    def _node(self, node: dict[str, Any], now: float) -> None:
        meta = node["metadata"]
        labels = meta.get("labels") or {}
        if NODEPOOL_LABEL not in labels:
            return
        rec = self.nodes.get(meta["name"])
        if rec is None:
            rec = self.nodes[meta["name"]] = NodeTimes(
                meta["name"], now, labels[NODEPOOL_LABEL], labels.get("node.kubernetes.io/instance-type", ""))
        ready = _condition(node.get("status") or {}, "Ready")
        taints = {t.get("key") for t in (node.get("spec") or {}).get("taints") or []}
        if rec.ready is None and ready and ready.get("status") == "True" and UNREGISTERED_TAINT not in taints \
                and "node.kubernetes.io/not-ready" not in taints:
            rec.ready = now
        if rec.deleting is None and meta.get("deletionTimestamp"):
            rec.deleting = now

    # ---------------------------------------------------------------------------------------------
    # snapshots (thread-safe copies)

    def pod_list(self) -> list[PodTimes]:
        with self._lock:
            return [PodTimes(**vars(p)) for p in self.pods.values()]

    def node_list(self) -> list[NodeTimes]:
        with self._lock:
            return [NodeTimes(**vars(n)) for n in self.nodes.values()]

    def live_nodes(self) -> list[NodeTimes]:
        return [n for n in self.node_list() if n.gone is None]


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def seconds(value: float | None, since: float) -> str:
    return "-" if value is None else f"{value - since:.1f}s"


__all__ = ["NodeTimes", "Observer", "PodTimes", "seconds"]
