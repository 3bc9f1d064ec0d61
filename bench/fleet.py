"""Build nodes for the work-spreading and mesh benchmarks (bench_spread.py, bench_mesh.py).

Each :class:`Node` is the real thing except the Kubernetes API: the real ``Engine``, a real
``PipelineDoc`` and a real ``RendezvousClient`` connected to a real rendezvous process, with
its own in-memory Kubernetes API (``tests/helpers/fakekube.py``). So these benchmarks measure
the claim protocol and the mesh, not an API server. Every node runs in this one process.

The :class:`Driver` plays the Job controller, the kubelet and the runner for one node: it
gives each new Job a running pod, and after ``run_seconds`` finishes it successfully and
hands the Job event to the engine (as the kopf watch would). Every finished run goes into
the shared :class:`Ledger`, which is how a (story, stage) run to completion twice is caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.fakekube import FakeKube

from huskies_agent.engine import Engine
from huskies_agent.k8s import objects
from huskies_agent.metrics import Metrics
from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import Changes, PipelineDoc
from huskies_agent.settings import Settings
from huskies_agent.sync.client import RendezvousClient

RESULT = json.dumps({"commit": "0" * 40, "pushed": True})
RUN_STAGES = (stages.CURRENT, stages.QA, stages.MERGE)


def pct(values: Iterable[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class ErrorCounter(logging.Handler):
    """Counts (and keeps the first few of) the engine's ERROR records: a benchmark that hid a
    crashed task behind good figures would be lying."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 5:
            self.first.append(self.format(record))


def quiet_logging(verbose: bool) -> ErrorCounter:
    """Engine logs at WARNING only with ``verbose`` (a lost race logs one line); errors are counted."""
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    counter = ErrorCounter()
    logging.getLogger("huskies_agent").addHandler(counter)
    return counter


@dataclass
class Ledger:
    """Every run the drivers finished, by (story, stage)."""

    completions: defaultdict[tuple[str, str], list[tuple[str, int]]] = field(
        default_factory=lambda: defaultdict(list))
    #: When a driver first saw a Job of (story, stage) (perf_counter seconds).
    first_job: dict[tuple[str, str], float] = field(default_factory=dict)

    def job_seen(self, spec: objects.RunSpec, at: float) -> None:
        self.first_job.setdefault((spec.story_id, spec.stage), at)

    def completed(self, spec: objects.RunSpec) -> None:
        self.completions[(spec.story_id, spec.stage)].append((spec.node, spec.epoch))

    def by_node(self) -> Counter[str]:
        return Counter(node for runs in self.completions.values() for node, _ in runs)

    def twice(self) -> dict[tuple[str, str], list[tuple[str, int]]]:
        return {key: runs for key, runs in self.completions.items() if len(runs) > 1}

    def missing(self, story_ids: Iterable[str], run_stages: Iterable[str] = RUN_STAGES) -> list[tuple[str, str]]:
        wanted = list(run_stages)
        return [(sid, stage) for sid in story_ids for stage in wanted if (sid, stage) not in self.completions]


@dataclass
class StageWatch:
    """Stage moves of every story as one more client (the humans' side) sees them."""

    doc: PipelineDoc
    seen: dict[str, list[str]] = field(default_factory=dict)
    backwards: list[tuple[str, str, str]] = field(default_factory=list)
    moved: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.doc.add_listener(self._on_changes)

    async def wait_done(self, story_ids: list[str], timeout: float) -> bool:
        """Wait until every story is in 5_done (False after ``timeout`` seconds)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.done(story_ids) < len(story_ids):
                    self.moved.clear()
                    await self.moved.wait()
        return self.done(story_ids) == len(story_ids)

    def _on_changes(self, changes: Changes) -> None:
        for sid in changes.stories:
            story = self.doc.story(sid)
            if story is None:
                continue
            history = self.seen.setdefault(sid, [])
            if history and history[-1] == story.stage:
                continue
            if history and stages.ALL_STAGES.index(story.stage) < stages.ALL_STAGES.index(history[-1]):
                self.backwards.append((sid, history[-1], story.stage))
            history.append(story.stage)
            self.moved.set()

    def done(self, story_ids: Iterable[str]) -> int:
        return sum(1 for sid in story_ids if (s := self.doc.story(sid)) is not None and s.stage == stages.DONE)


def node_settings(node_id: str, capacity: int, *, presence_interval: float, resync_interval: float = 5.0) -> Settings:
    return Settings(
        namespace="bench", cluster_name=node_id, node_id=node_id, replica_id=node_id,
        max_concurrent=capacity, presence_interval_seconds=presence_interval,
        resync_interval_seconds=resync_interval, confirm_timeout_seconds=5.0, claim_timeout_seconds=600.0,
        finished_ttl_seconds=3600.0, no_pod_timeout_seconds=600.0, metrics_port=0,
    )


class Driver:
    """The Job controller, kubelet and runner of one node, over its in-memory API."""

    def __init__(self, node: Node, ledger: Ledger, run_seconds: float, tick: float) -> None:
        self.node = node
        self.ledger = ledger
        self.run_seconds = run_seconds
        self.tick = tick
        self.started: dict[str, float] = {}

    async def run(self) -> None:
        kube, engine = self.node.kube, self.node.engine
        while True:
            now = time.monotonic()
            for name, job in list(kube.jobs.items()):
                if objects.job_condition(job) is not None:
                    continue
                began = self.started.get(name)
                if began is None:
                    self.started[name] = now
                    if (spec := objects.run_spec_from_object(job)) is not None:
                        self.ledger.job_seen(spec, time.perf_counter())
                    pod = kube.add_pod(name, status={"phase": "Running"})
                    await engine.on_pod_event("ADDED", pod)
                    await engine.on_job_event("MODIFIED", kube.set_job_active(name))
                elif now - began >= self.run_seconds:
                    finished = kube.finish_job(name, succeeded=True, exit_code=0, message=RESULT)
                    spec = objects.run_spec_from_object(finished)
                    if spec is not None:
                        self.ledger.completed(spec)
                    await engine.on_job_event("MODIFIED", finished)
            await asyncio.sleep(self.tick)


class Node:
    """One build node: the real engine, document and sync client; an in-memory API."""

    def __init__(self, node_id: str, capacity: int, url: str, *, presence_interval: float,
                 resync_interval: float = 5.0) -> None:
        self.node_id = node_id
        self.capacity = capacity
        self.settings = node_settings(node_id, capacity, presence_interval=presence_interval,
                                      resync_interval=resync_interval)
        self.doc = PipelineDoc()
        self.kube = FakeKube(self.settings.namespace)
        self.metrics = Metrics()
        self.client = RendezvousClient(self.doc, url, reconnect_min=0.05, reconnect_max=0.5, open_timeout=30.0)
        self.engine = Engine(self.settings, self.kube, self.doc, self.client, node_id, self.metrics)
        self.sync_seconds = float("nan")
        self.active_seconds = float("nan")
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self, ledger: Ledger, *, run_seconds: float, tick: float = 0.02) -> None:
        """Connect, sync, start the engine and its driver; returns once the engine is active."""
        started = time.perf_counter()
        await self.client.__aenter__()
        await self.client.wait_synced(120)
        self.sync_seconds = time.perf_counter() - started
        self._tasks.append(asyncio.create_task(self.engine.run(), name=f"engine:{self.node_id}"))
        await self.engine.activated.wait()
        self.active_seconds = time.perf_counter() - started
        driver = Driver(self, ledger, run_seconds, tick)
        self._tasks.append(asyncio.create_task(driver.run(), name=f"driver:{self.node_id}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.client.__aexit__(None, None, None)
        self.doc.close()

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, dict(labels or {})) or 0.0

    @property
    def jobs_created(self) -> int:
        return int(self.sample("huskies_jobs_created_total"))

    @property
    def jobs_lost(self) -> int:
        """Jobs deleted because the claim went to another node (Phase.LOST)."""
        return int(self.sample("huskies_jobs_deleted_total", {"reason": "lost"}))

    @property
    def jobs_deleted(self) -> int:
        return sum(1 for method, _ in self.kube.calls if method == "delete_job")


@dataclasses.dataclass
class ProcStats:
    """CPU seconds (user + system) and memory of a process, from /proc/<pid>."""

    cpu_seconds: float
    rss_mib: float
    peak_rss_mib: float

    @classmethod
    def read(cls, pid: int) -> ProcStats:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        status = {line.split(":", 1)[0]: line.split(":", 1)[1].split()
                  for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line}
        rss = int(status.get("VmRSS", ["0"])[0]) / 1024
        peak = int(status.get("VmHWM", ["0"])[0]) / 1024
        return cls(cpu, rss, peak)
