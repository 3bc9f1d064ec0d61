"""The Engine: wires the parts together and runs the loops.

One engine runs in the replica that holds the leader Lease. It reacts to document
changes as they arrive (no polling for the fast path), confirms each claim with the
rendezvous before creating anything, deletes a Job the moment its claim is lost, and
turns finished Jobs into stage moves or counted failures. A periodic resync repairs
anything an event missed, takes work over from dead nodes and cleans up.

Kubernetes watch events reach the engine through the kopf handlers in ``handlers.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from huskies_agent import claims
from huskies_agent.backoff import Backoff
from huskies_agent.engine import claiming, node, observe, recovery
from huskies_agent.engine.context import Context
from huskies_agent.engine.holds import NodeState
from huskies_agent.engine.phases import Phase
from huskies_agent.engine.ports import KubeApi, Monotonic, PodApi, Replicator, WallClock
from huskies_agent.engine.runs import Run
from huskies_agent.engine.warmpool import WarmPool
from huskies_agent.k8s import warmpod
from huskies_agent.metrics import Metrics
from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import Changes, PipelineDoc
from huskies_agent.settings import Settings
from huskies_agent.spend import SpendLedger

log = logging.getLogger("huskies_agent.engine")


class Engine:
    def __init__(
        self,
        settings: Settings,
        kube: KubeApi,
        doc: PipelineDoc,
        sync: Replicator,
        node_id: str,
        metrics: Metrics,
        *,
        clock: WallClock = time.time,
        monotonic: Monotonic = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        pods: PodApi | None = None,
    ) -> None:
        self.ctx = Context(settings, kube, doc, sync, node_id, metrics, clock=clock, mono=monotonic, sleep=sleep,
                           liveness=claims.Liveness(settings.claim_timeout_seconds),
                           node=NodeState(SpendLedger(settings.daily_budget_usd),
                                          auth_pause_seconds=settings.agent_auth_pause_seconds))
        #: The warm build slots (placeholder pods), when ``build.warm_slots`` asks for some.
        self.pool = WarmPool(self.ctx, pods) if pods is not None and settings.build.warm_slots > 0 else None
        self.active = False
        #: Set once adoption is done and the engine reacts to changes.
        self.activated = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._remove_listener = doc.add_listener(self._on_changes)
        self._remove_state = sync.on_state(self._on_link_state)

    # ------------------------------------------------------------------ views
    @property
    def me(self) -> str:
        return self.ctx.me

    @property
    def runs(self) -> Mapping[str, Run]:
        return self.ctx.table.runs

    @property
    def busy(self) -> int:
        return self.ctx.table.busy

    # ------------------------------------------------------------------ wiring
    def _on_changes(self, changes: Changes) -> None:
        # Runs inside a pycrdt callback: no document writes here, just schedule work.
        if changes.remote:
            # Only a change received from a peer says that peer is alive (never our own writes).
            now = self.ctx.mono()
            for node in changes.nodes - {self.me}:
                self.ctx.liveness.heard(node, now)
        if changes.nodes and not changes.stories:
            return
        self.ctx.mark_dirty(changes.stories)

    def _on_link_state(self, connected: bool) -> None:
        """The rendezvous connection opened or ended (a sync callback: no awaits here)."""
        if connected:
            self._link_synced()
        else:
            self.ctx.link.clear()
            self.ctx.liveness.link_down()
            self.ctx.metrics.synced.set(0)
            self._disconnected.set()

    def _link_synced(self) -> None:
        ctx = self.ctx
        if not ctx.link_ready() or ctx.link.is_set():
            return
        ctx.link.set()
        ctx.liveness.link_up(ctx.mono())
        ctx.metrics.synced.set(1)
        if self.active:
            # Claims and outcomes waited while cut off: look at everything again.
            mark_all(ctx)

    async def _link_loop(self) -> None:
        """Follow the link: up when a connection has synced, down when it ends."""
        while True:
            self._disconnected.clear()
            await self.ctx.sync.wait_synced()
            self._link_synced()
            await self._disconnected.wait()

    async def run(self) -> None:
        """Start (after this replica became leader) and run until cancelled."""
        await self.start()
        await self.serve()

    async def start(self) -> None:
        """First sync with the rendezvous, adoption of what survived, then react to changes."""
        ctx = self.ctx
        self.write_presence()
        log.info("waiting for the first sync with the rendezvous")
        sync_started = ctx.mono()
        while True:
            try:
                await ctx.sync.wait_synced(timeout=30)
                break
            except TimeoutError:
                log.warning("rendezvous not synced yet (connected=%s); still waiting", ctx.sync.connected)
        ctx.metrics.initial_sync.set(ctx.mono() - sync_started)
        self._link_synced()
        ctx.metrics.doc_stories.set(len(ctx.doc.stories))
        export_stories(ctx)
        await self._adopt_until_done()
        self.active = True
        self.activated.set()
        mark_all(ctx)
        log.info("engine active: node %s, %d stories in the pipeline", self.me, len(ctx.doc.stories))

    async def serve(self) -> None:
        """The dispatch, resync and presence loops, until cancelled."""
        ctx = self.ctx
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._dispatch_loop(), name="dispatch")
                tg.create_task(self._periodic_loop(), name="resync")
                tg.create_task(self._presence_loop(), name="presence")
                tg.create_task(self._link_loop(), name="link")
                if self.pool is not None:
                    tg.create_task(self.pool.run(), name="warm-slots")
        finally:
            self.active = False
            ctx.cancel_tasks()
            if self.pool is not None:
                await self.pool.drain()
            self._remove_listener()
            self._remove_state()

    async def _adopt_until_done(self) -> None:
        backoff = Backoff(minimum=0.5, maximum=15.0)
        while True:
            try:
                await recovery.adopt(self.ctx)
                return
            except Exception as exc:
                # 429 "storage is (re)initializing", 5xx, a flaky network: try again.
                delay = backoff.next_delay()
                log.warning("adoption failed (%s); retrying in %.1fs", exc, delay)
                await self.ctx.sleep(delay)

    async def _dispatch_loop(self) -> None:
        ctx = self.ctx
        while True:
            await ctx.wake.wait()
            ctx.wake.clear()
            dirty, ctx.dirty = ctx.dirty, set()
            heard, ctx.dirty_since = ctx.dirty_since, None
            try:
                claiming.reconcile(ctx, dirty, heard=heard)
            except Exception:
                log.exception("reconcile failed; the next resync retries")
            self.kick_pool()

    async def _periodic_loop(self) -> None:
        while True:
            await self.ctx.sleep(self.ctx.settings.resync_interval_seconds)
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic resync failed")

    async def _presence_loop(self) -> None:
        while True:
            await self.ctx.sleep(self.ctx.settings.presence_interval_seconds)
            self.write_presence()

    def write_presence(self) -> None:
        node.write_presence(self.ctx)

    # ------------------------------------------------------------------ entry points
    def reconcile(self, story_ids: Iterable[str]) -> None:
        claiming.reconcile(self.ctx, story_ids)

    async def adopt(self) -> None:
        await recovery.adopt(self.ctx)

    async def resync(self) -> None:
        ctx = self.ctx
        ctx.metrics.doc_stories.set(len(ctx.doc.stories))
        ctx.metrics.doc_malformed.set(len(ctx.doc.malformed))
        export_stories(ctx)
        ctx.table.prune(ctx.mono())
        ctx.node.uncounted = {sid: n for sid, n in ctx.node.uncounted.items()
                              if (story := ctx.doc.story(sid)) is not None and not story.blocked}
        ctx.claimable_since = {sid: t for sid, t in ctx.claimable_since.items()
                               if (story := ctx.doc.story(sid)) is not None and story.claim is None}
        mark_all(ctx)
        await observe.check_jobs(ctx)
        await observe.check_stuck(ctx)
        await recovery.cleanup_finished(ctx)
        node.claim_pause(ctx)  # keeps the pause gauges and presence current (a new UTC day...)
        phases = ctx.table.count_by_phase()
        for phase in (Phase.PENDING, Phase.RUNNING):
            ctx.metrics.storyjobs.labels(phase.value).set(phases.get(phase, 0))

    async def on_job_event(self, event_type: str, job: Mapping[str, Any]) -> None:
        if self.active:
            await observe.on_job_event(self.ctx, event_type, job)
            self.kick_pool()

    async def on_pod_event(self, event_type: str, pod: Mapping[str, Any]) -> None:
        if self.active:
            if not warmpod.is_placeholder(pod):
                await observe.on_pod_event(self.ctx, event_type, pod)
            self.kick_pool()

    def kick_pool(self) -> None:
        """The runs or the placeholders changed: the warm-slot pool looks again."""
        if self.pool is not None:
            self.pool.kick()

    async def on_autoscaler_event(self, event_type: str, event: Mapping[str, Any]) -> None:
        if self.active:
            await observe.on_autoscaler_event(self.ctx, event_type, event)


def mark_all(ctx: Context) -> None:
    """Look at everything again: each story in an active stage and each run of this node (a
    story in another stage that runs nowhere here needs nothing, so 100,000 archived stories
    cost nothing)."""
    ctx.mark_dirty(ctx.doc.active_ids)
    ctx.mark_dirty(ctx.table.runs)


def export_stories(ctx: Context) -> None:
    """Stories by stage and blocked flag, and those waiting here for room (refreshed on the resync)."""
    ctx.metrics.set_stories((s.stage if stages.is_stage(s.stage) else "other", s.blocked)
                            for s in ctx.doc.stories.values())
    ctx.metrics.waiting.set(len(ctx.waiting))
