"""Engine unit tests: the real engine and PipelineDoc, an in-memory Kubernetes API
(tests/helpers/fakekube.py), a scripted replicator and a hand-driven monotonic clock.
No control plane, no sockets, no sleeping: each test runs in milliseconds."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from tests.helpers.fakekube import FakeKube

from huskies_agent.engine import Engine
from huskies_agent.metrics import Metrics
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.settings import Settings

ME = "node-me"


class FakeClock:
    """A monotonic (and wall) clock that moves only when the test says so."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeReplicator:
    """Stands in for the rendezvous client: connected/synced flags the test sets, and
    ``confirm`` answers ``True`` while connected and synced (as the real one does when the
    rendezvous acknowledges)."""

    def __init__(self) -> None:
        self.connected = True
        self.synced = True
        self.confirms = 0
        self.refuse_confirm = False
        self._callbacks: list[Callable[[bool], None]] = []
        self._changed = asyncio.Event()

    async def wait_synced(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            while not self.synced:
                self._changed = asyncio.Event()
                await self._changed.wait()

    async def confirm(self, timeout: float) -> bool:
        self.confirms += 1
        return self.connected and self.synced and not self.refuse_confirm

    def on_state(self, callback: Callable[[bool], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def set_link(self, connected: bool, synced: bool | None = None) -> None:
        """Open or end the connection (callbacks fire, as the real client's do, on that edge)."""
        self.connected = connected
        self.synced = connected if synced is None else synced
        for callback in list(self._callbacks):
            callback(connected)
        self._changed.set()

    def finish_sync(self) -> None:
        """The open connection's initial sync completes (no callback: the engine waits for it)."""
        self.synced = True
        self._changed.set()


SETTINGS = Settings(
    namespace="default", max_concurrent=4, max_retries=3, confirm_timeout_seconds=0.01,
    claim_timeout_seconds=60, image_pull_timeout_seconds=180, pending_timeout_seconds=900,
    no_pod_timeout_seconds=120, finished_ttl_seconds=3600,
)


@dataclasses.dataclass
class Harness:
    engine: Engine
    kube: FakeKube
    doc: PipelineDoc
    sync: FakeReplicator
    mono: FakeClock
    wall: FakeClock

    async def settle(self, turns: int = 500) -> None:
        """Run the dispatcher and the spawned tasks for a while (the fake API never blocks,
        so a few hundred loop turns finish everything that can finish; tasks that wait for
        the link or a confirmation stay waiting)."""
        ctx = self.engine.ctx
        for _ in range(turns):
            if ctx.dirty:
                dirty, ctx.dirty = ctx.dirty, set()
                ctx.wake.clear()
                self.engine.reconcile(dirty)
            await asyncio.sleep(0)

    def storyjob(self, story_id: str) -> dict[str, Any]:
        found = [sj for sj in self.kube.storyjobs.values() if sj["spec"]["storyId"] == story_id]
        assert len(found) == 1, found
        return found[0]

    def job_name(self, story_id: str) -> str:
        return str(self.storyjob(story_id)["metadata"]["name"])


@pytest.fixture
def make_engine() -> Callable[..., Harness]:
    def make(doc: PipelineDoc | None = None, kube: FakeKube | None = None, **overrides: Any) -> Harness:
        settings = dataclasses.replace(SETTINGS, **overrides)
        mono, wall = FakeClock(), FakeClock(1.7e9)
        sync = FakeReplicator()
        doc = doc if doc is not None else PipelineDoc()
        kube = kube if kube is not None else FakeKube()
        async def sleep(seconds: float) -> None:
            mono.advance(seconds)
            await asyncio.sleep(0)

        engine = Engine(settings, kube, doc, sync, ME, Metrics(), clock=wall, monotonic=mono, sleep=sleep)
        return Harness(engine, kube, doc, sync, mono, wall)

    return make


@pytest.fixture
async def h(make_engine: Callable[..., Harness]) -> Harness:
    harness = make_engine()
    await harness.engine.start()
    await harness.settle()
    return harness


@pytest.fixture(autouse=True)
def no_task_crashes(caplog: pytest.LogCaptureFixture) -> Any:
    """A spawned engine task that raised is a test failure, not just a log line."""
    yield
    crashes = [r for r in caplog.records if r.getMessage().startswith("task ") and r.getMessage().endswith("failed")]
    assert not crashes, [(r.getMessage(), r.exc_info) for r in crashes]
