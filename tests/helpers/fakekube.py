"""An in-memory stand-in for the operator's Kubernetes API (``engine.ports.KubeApi``).

Used where a real API server would only slow a unit test down: the engine's decisions
(timeouts, adoption, capacity, outcomes) are tested against it in milliseconds, while
the end-to-end tests keep the real control plane for the wiring. It keeps StoryJobs,
Jobs, Pods and Events with the API's semantics the engine relies on: 409 when a name
exists, 404 when it does not, merge-patched status, owner-reference cascade when a
StoryJob is deleted, pods deleted with their Job. Failures can be injected per call.

Nothing here runs a controller: tests move Jobs and pods along with :meth:`add_pod`,
:meth:`set_pod_status` and :meth:`finish_job`.
"""

from __future__ import annotations

import copy
import itertools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from huskies_agent import contract
from huskies_agent.k8s.api import ApiException

_uids = itertools.count(1)


def _matches(obj: Mapping[str, Any], selector: str) -> bool:
    """Equality-based label selectors (``a=b,c=d``), the only kind the operator uses."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """JSON merge patch (RFC 7386): ``None`` deletes, mappings merge, the rest replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


@dataclass
class Event:
    name: str
    reason: str
    message: str
    warning: bool


class FakeKube:
    """StoryJobs, Jobs, Pods and Events of one namespace, in memory."""

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self.storyjobs: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: list[Event] = []
        #: core/v1 Events posted by others (an autoscaler), as the API serves them.
        self.core_events: list[dict[str, Any]] = []
        #: Every call as ``(method, name or selector)``, in order.
        self.calls: list[tuple[str, str]] = []
        self._failures: defaultdict[str, list[BaseException]] = defaultdict(list)

    # ------------------------------------------------------------------ test controls
    def fail(self, method: str, exc: BaseException | int, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``exc`` (an HTTP status: ApiException)."""
        error = ApiException(exc, "injected") if isinstance(exc, int) else exc
        self._failures[method].extend([error] * times)

    def add_pod(self, job_name: str, *, status: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A pod of ``job_name`` as the Job controller would create it."""
        job = self.jobs[job_name]
        template = job["spec"]["template"]["metadata"]
        name = f"{job_name}-{len([p for p in self.pods.values() if _matches(p, f'job-name={job_name}')])}"
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "uid": f"uid-{next(_uids)}",
                         "labels": {**template.get("labels", {}), "job-name": job_name},
                         "annotations": dict(template.get("annotations", {}))},
            "status": dict(status or {"phase": "Pending"}),
        }
        self.pods[name] = pod
        return copy.deepcopy(pod)

    def add_event(self, pod_name: str, reason: str, message: str, *, source: str, at: str = "") -> dict[str, Any]:
        """A core/v1 Event about pod ``pod_name``, as another component (``source``) posts it."""
        event: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod_name}.{len(self.core_events)}", "namespace": self.namespace},
            "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": self.namespace},
            "reason": reason, "message": message, "source": {"component": source}, "type": "Normal",
        }
        if at:
            event["lastTimestamp"] = at
        self.core_events.append(event)
        return copy.deepcopy(event)

    def set_pod_status(self, pod_name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        self.pods[pod_name]["status"] = copy.deepcopy(dict(status))
        return copy.deepcopy(self.pods[pod_name])

    def set_job_active(self, job_name: str) -> dict[str, Any]:
        self.jobs[job_name]["status"] = {"active": 1}
        return copy.deepcopy(self.jobs[job_name])

    def finish_job(self, job_name: str, *, succeeded: bool, reason: str = "", exit_code: int | None = None,
                   message: str = "") -> dict[str, Any]:
        """Mark the Job finished, its pods terminated with ``exit_code`` and ``message``."""
        condition = {"type": "Complete" if succeeded else "Failed", "status": "True"}
        if reason:
            condition["reason"] = reason
        self.jobs[job_name]["status"] = {"conditions": [condition]}
        if exit_code is not None:
            pods = [p for p in self.pods.values() if _matches(p, f"job-name={job_name}")] or [
                self.pods[self.add_pod(job_name)["metadata"]["name"]]]
            for pod in pods:
                pod["status"] = {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [
                    {"name": contract.RESULT_CONTAINER, "state": {"terminated": {"exitCode": exit_code,
                                                                   "message": message}}}]}
        return copy.deepcopy(self.jobs[job_name])

    def phase(self, name: str) -> str | None:
        sj = self.storyjobs.get(name)
        return None if sj is None else (sj.get("status") or {}).get("phase")

    def put_storyjob(self, body: Mapping[str, Any], status: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Plant a StoryJob as a previous operator process left it."""
        sj = self._create(self.storyjobs, body)
        if status:
            sj["status"] = copy.deepcopy(dict(status))
        return sj

    def put_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._create(self.jobs, body)

    # ------------------------------------------------------------------ KubeApi
    async def create_storyjob(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._call("create_storyjob", body["metadata"]["name"])
        # The API server starts a custom resource at generation 1 (status writes never bump it).
        body = {**body, "metadata": {**body["metadata"], "generation": 1}}
        return copy.deepcopy(self._create(self.storyjobs, body))

    async def get_storyjob(self, name: str) -> dict[str, Any]:
        self._call("get_storyjob", name)
        return copy.deepcopy(self._get(self.storyjobs, name))

    async def list_storyjobs(self, selector: str) -> list[dict[str, Any]]:
        self._call("list_storyjobs", selector)
        return [copy.deepcopy(o) for o in self.storyjobs.values() if _matches(o, selector)]

    async def patch_storyjob_status(self, name: str, status: Mapping[str, Any]) -> None:
        self._call("patch_storyjob_status", name)
        obj = self._get(self.storyjobs, name)
        current = obj.setdefault("status", {})
        _merge(current, status)

    async def delete_storyjob(self, name: str) -> None:
        self._call("delete_storyjob", name)
        obj = self._get(self.storyjobs, name)
        del self.storyjobs[name]
        uid = obj["metadata"]["uid"]
        # The garbage collector removes what the StoryJob owns.
        for job_name, job in list(self.jobs.items()):
            if any(ref.get("uid") == uid for ref in job["metadata"].get("ownerReferences") or []):
                self._delete_job_now(job_name)

    async def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._call("create_job", body["metadata"]["name"])
        return copy.deepcopy(self._create(self.jobs, body))

    async def get_job(self, name: str) -> dict[str, Any]:
        self._call("get_job", name)
        return copy.deepcopy(self._get(self.jobs, name))

    async def list_jobs(self, selector: str) -> list[dict[str, Any]]:
        self._call("list_jobs", selector)
        return [copy.deepcopy(o) for o in self.jobs.values() if _matches(o, selector)]

    async def delete_job(self, name: str, *, pod_grace_seconds: int | None = None) -> bool:
        self._call("delete_job", name)
        existed = name in self.jobs
        self._delete_job_now(name)
        return existed

    async def create_pod(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A pod created directly (warm-slot placeholders); ``generateName`` gets a suffix."""
        meta = dict(body["metadata"])
        if "name" not in meta:
            meta["name"] = f"{meta.pop('generateName', 'pod-')}{next(_uids):05d}"
        self._call("create_pod", meta["name"])
        obj = self._create(self.pods, {**body, "metadata": meta})
        obj["status"] = {"phase": "Pending"}
        return copy.deepcopy(obj)

    async def delete_pod(self, name: str) -> bool:
        self._call("delete_pod", name)
        return self.pods.pop(name, None) is not None

    async def list_pods(self, selector: str) -> list[dict[str, Any]]:
        self._call("list_pods", selector)
        return [copy.deepcopy(o) for o in self.pods.values() if _matches(o, selector)]

    async def list_events(self, field_selector: str) -> list[dict[str, Any]]:
        """Events planted with :meth:`add_event` (``involvedObject.name=<name>`` selectors only)."""
        self._call("list_events", field_selector)
        key, _, value = field_selector.partition("=")
        assert key == "involvedObject.name", field_selector
        return [copy.deepcopy(e) for e in self.core_events if (e.get("involvedObject") or {}).get("name") == value]

    async def post_event(self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False,
                         component: str = "huskies-agent") -> None:
        try:
            self._call("post_event", reason)
        except Exception:  # like the real client: Events are best effort
            return
        self.events.append(Event((obj.get("metadata") or {}).get("name", ""), reason, message, warning))

    # ------------------------------------------------------------------ internals
    def _call(self, method: str, what: str) -> None:
        self.calls.append((method, what))
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _create(self, store: dict[str, dict[str, Any]], body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if name in store:
            raise ApiException(409, "Conflict", f'{{"message": "{name} already exists"}}')
        obj = copy.deepcopy(dict(body))
        obj["metadata"] = {**obj["metadata"], "uid": f"uid-{next(_uids)}", "namespace": self.namespace}
        obj.setdefault("status", {})
        store[name] = obj
        return obj

    def _get(self, store: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
        try:
            return store[name]
        except KeyError:
            raise ApiException(404, "Not Found") from None

    def _delete_job_now(self, name: str) -> None:
        self.jobs.pop(name, None)
        for pod_name in [n for n, p in self.pods.items() if _matches(p, f"job-name={name}")]:
            del self.pods[pod_name]
