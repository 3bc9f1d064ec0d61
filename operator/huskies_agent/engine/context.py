"""What every part of the engine shares: its dependencies, the run table and the
hooks that schedule work (spawned tasks, the dirty set that wakes the dispatcher)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from huskies_agent import claims
from huskies_agent.engine.holds import NodeState
from huskies_agent.engine.pool import Tally
from huskies_agent.engine.ports import KubeApi, Monotonic, Replicator, WallClock
from huskies_agent.engine.runs import RunTable
from huskies_agent.k8s import objects
from huskies_agent.metrics import Metrics
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.settings import Settings

log = logging.getLogger("huskies_agent.engine")

#: Longest a status write or Event waits for the starts in progress (Context.followup).
FOLLOWUP_DEFER_SECONDS = 10.0


@dataclass
class Context:
    settings: Settings
    kube: KubeApi
    doc: PipelineDoc
    sync: Replicator
    me: str
    metrics: Metrics
    #: Wall clock: only for values written into the document and StoryJob timestamps.
    clock: WallClock = time.time
    #: Monotonic clock: every timeout, cooldown and latency.
    mono: Monotonic = time.monotonic
    #: How the engine waits between retries (tests pass one that moves the fake clock).
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    table: RunTable = field(default_factory=RunTable)
    #: Set while the rendezvous link is connected and synced: the only time the
    #: engine writes claims and outcomes (invariant I4 of docs/claims.md).
    link: asyncio.Event = field(default_factory=asyncio.Event)
    #: Stories to look at on the next dispatch, and stories that waited for room.
    dirty: set[str] = field(default_factory=set)
    #: Monotonic time of the first change marked dirty since the last dispatch (timing only).
    dirty_since: float | None = None
    waiting: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    #: Who is alive, judged only from presence changes received (docs/claims.md, I5).
    liveness: claims.Liveness = field(default_factory=lambda: claims.Liveness(600.0))
    #: Story id -> monotonic time it was first seen claimable (work spreading).
    claimable_since: dict[str, float] = field(default_factory=dict)
    #: Stories left for a better-ranked node, and when they are looked at again.
    spreading: set[str] = field(default_factory=set)
    recheck_at: float | None = None
    #: Node-level holds on claiming and the daily spend ledger.
    node: NodeState = field(default_factory=NodeState)
    #: The warm-slot placeholders as last seen (engine/warmpool.py), for presence.
    warm: Tally = field(default_factory=Tally)
    # Creating Jobs is the latency that matters; status patches and Events queue behind it.
    create_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(32))
    followup_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))
    #: Starts queued or creating now; follow-ups wait for none (see :meth:`followup`).
    starting: int = 0
    starts_done: asyncio.Event = field(default_factory=asyncio.Event)

    def start_begins(self) -> None:
        self.starting += 1
        self.starts_done.clear()

    def start_ends(self) -> None:
        self.starting -= 1
        if self.starting <= 0:
            self.starting = 0
            self.starts_done.set()

    @contextlib.asynccontextmanager
    async def followup(self) -> AsyncIterator[None]:
        """A slot for a status write or an Event, once the starts queued now are done.

        The API server's CPU is what a burst waits for (bench/bench_operator.py: it uses
        about half the machine then); a status patch or an Event is not needed for a story
        to run, so during a burst they wait until the Jobs exist (at most
        ``FOLLOWUP_DEFER_SECONDS``, so they never wait for ever).
        """
        if self.starting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FOLLOWUP_DEFER_SECONDS):
                    await self.starts_done.wait()
        async with self.followup_slots:
            yield

    @property
    def selector(self) -> str:
        return objects.selector_for_node(self.settings, self.me)

    def is_dead(self, node: str) -> bool:
        return self.liveness.is_dead(node, self.mono())

    def link_ready(self) -> bool:
        return self.sync.connected and self.sync.synced

    async def wait_link(self) -> None:
        """Return once connected and synced (at once when already)."""
        while not self.link_ready():
            self.link.clear()
            await self.link.wait()

    @property
    def free(self) -> int:
        return max(0, self.settings.max_concurrent - self.table.busy)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def mark_dirty(self, story_ids: Iterable[str]) -> None:
        self.dirty.update(story_ids)
        if self.dirty_since is None:
            self.dirty_since = self.mono()
        self.wake.set()

    def capacity_changed(self) -> None:
        """Capacity freed or claims settled: look again at the stories that had to wait."""
        if self.table.busy < self.settings.max_concurrent and self.waiting:
            self.mark_dirty(self.waiting)
            self.waiting.clear()
