"""Operator test helpers: a pipeline peer, API access, polling (processes: huskies_agent_dev.localrun)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tests.helpers.kube import TestKube

from huskies_agent.k8s.api import Kube, connect
from huskies_agent.pipeline.document import Changes, PipelineDoc
from huskies_agent.pipeline.model import NodePresence
from huskies_agent.sync.client import RendezvousClient
from huskies_agent_dev.localrun import FAST, Proc, free_port, metrics_text, start_operator, start_rendezvous, wait_http


async def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
                     what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def pipeline(url: str) -> AsyncIterator[PipelineDoc]:
    """A test peer on the rendezvous: edits go through the real sync protocol."""
    doc = PipelineDoc()
    async with RendezvousClient(doc, url, reconnect_min=0.1, reconnect_max=0.5) as client:
        await client.wait_synced(timeout=10)
        doc.client = client  # type: ignore[attr-defined]
        yield doc


async def flush(doc: PipelineDoc) -> None:
    ok = await doc.client.confirm(5)  # type: ignore[attr-defined]
    assert ok, "rendezvous did not confirm the test's edit"


def pretend_node(doc: PipelineDoc, node_id: str, *, alive_for: float = 3600) -> None:
    """Make another (fake) node look alive in the document."""
    doc.put_presence(NodePresence(node_id=node_id, last_seen=time.time() + alive_for, alive=True))


@contextlib.asynccontextmanager
async def kube(kubeconfig: str, namespace: str) -> AsyncIterator[TestKube]:
    api = await connect(kubeconfig)
    k = TestKube(api, namespace)
    try:
        yield k
    finally:
        await k.close()


async def first_storyjob(k: Kube, phase: str) -> dict[str, Any] | None:
    """The first StoryJob in ``phase``, or None."""
    for sj in await k.list_storyjobs(""):
        if (sj.get("status") or {}).get("phase") == phase:
            return sj
    return None


def dump(*procs: Proc) -> str:
    return "\n".join(f"===== {p.name} =====\n{p.log()[-20000:]}" for p in procs)


class StageLog:
    """Every stage each story of ``doc`` was seen in, in order (consecutive repeats merged)."""

    def __init__(self, doc: PipelineDoc) -> None:
        self.doc = doc
        self.history: dict[str, list[str]] = {}
        self._remove = doc.add_listener(self._changed)
        self._record(doc.stories)

    def _changed(self, changes: Changes) -> None:
        self._record(changes.stories)

    def _record(self, story_ids: Iterable[str]) -> None:
        for sid in story_ids:
            story = self.doc.story(sid)
            if story is None:
                continue
            seen = self.history.setdefault(sid, [])
            if not seen or seen[-1] != story.stage:
                seen.append(story.stage)

    def close(self) -> None:
        self._remove()


@dataclass
class JobRecord:
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    state: str = "active"  # active | Complete | Failed
    deleting: bool = False  # deletionTimestamp seen
    gone: bool = False  # no longer listed
    ttl: int | None = None  # spec.ttlSecondsAfterFinished

    @property
    def stage(self) -> str:
        return self.labels.get("huskies.dev/stage", "")

    @property
    def story(self) -> str:
        return self.labels.get("huskies.dev/story", "")

    @property
    def finished(self) -> bool:
        return self.state != "active"


class JobLog:
    """Polls the Jobs of some namespaces and remembers every Job ever seen, by uid.

    A Job that disappears without having finished was deleted while it ran; a story
    with two Job uids ran twice.
    """

    def __init__(self, kubes: Iterable[Kube], interval: float = 0.25) -> None:
        self.kubes = list(kubes)
        self.interval = interval
        self.jobs: dict[str, JobRecord] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JobLog:
        await self.poll()
        self._task = asyncio.create_task(self._loop(), name="joblog")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(Exception):  # a slow API server: try again next round
                await self.poll()

    async def poll(self) -> None:
        listed: set[str] = set()
        for k in self.kubes:
            for job in await k.list_jobs(""):
                meta = job["metadata"]
                uid = meta["uid"]
                listed.add(uid)
                rec = self.jobs.get(uid)
                if rec is None:
                    rec = self.jobs[uid] = JobRecord(meta["namespace"], meta["name"], uid,
                                                     dict(meta.get("labels") or {}),
                                                     ttl=(job.get("spec") or {}).get("ttlSecondsAfterFinished"))
                for cond in (job.get("status") or {}).get("conditions") or []:
                    if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
                        rec.state = str(cond["type"])
                rec.deleting = rec.deleting or bool(meta.get("deletionTimestamp"))
        for uid, rec in self.jobs.items():
            if uid not in listed and not rec.gone:
                rec.gone = True

    def of_story(self, story_label: str) -> list[JobRecord]:
        return [r for r in self.jobs.values() if r.story == story_label]

    def deleted_while_running(self) -> list[JobRecord]:
        return [r for r in self.jobs.values() if (r.gone or r.deleting) and not r.finished]

    def active(self) -> list[JobRecord]:
        return [r for r in self.jobs.values() if not r.finished and not r.gone]


async def presence_changed(doc: PipelineDoc, node_id: str, timeout: float = 30.0) -> None:
    """Wait until ``node_id`` writes presence again (a sign it is connected and synced)."""
    before = doc.nodes.get(node_id)
    await eventually(lambda: doc.nodes.get(node_id) not in (None, before), timeout,
                     what=f"fresh presence from {node_id}")


def insecure_kubeconfig(kubeconfig: str, target: Path) -> str:
    """A copy of ``kubeconfig`` that does not check the API server's certificate.

    For operators with a skewed clock: a clock 15 minutes slow sees the test PKI's fresh
    certificate as not valid yet. The API server still authenticates the client cert.
    """
    config = yaml.safe_load(Path(kubeconfig).read_text())
    base = Path(kubeconfig).resolve().parent
    for cluster in config.get("clusters") or []:
        c = cluster["cluster"]
        c.pop("certificate-authority", None)
        c.pop("certificate-authority-data", None)
        c["insecure-skip-tls-verify"] = True
    for user in config.get("users") or []:
        u = user.get("user") or {}
        for key in ("client-certificate", "client-key"):
            if key in u and not Path(u[key]).is_absolute():
                u[key] = str(base / u[key])
    target.write_text(yaml.safe_dump(config))
    return str(target)


__all__ = ["FAST", "JobLog", "JobRecord", "Proc", "StageLog", "dump", "eventually", "first_storyjob", "flush",
           "free_port", "insecure_kubeconfig", "kube", "metrics_text", "pipeline", "presence_changed",
           "pretend_node", "start_operator", "start_rendezvous", "wait_http"]
