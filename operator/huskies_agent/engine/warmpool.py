"""The warm-slot pool, applied: keeps this node's placeholder pods at the size ``engine/pool.py``
decides, refills it when a build pod preempts one, and empties it when the node drains.

Only the leader's engine runs the pool. It looks again when woken (a placeholder changed, the
runs in flight changed) and every ``resync_interval_seconds`` as a safety net; an API error is
logged and retried with the package's backoff. When the engine stops (shutdown, lost
leadership) :meth:`WarmPool.drain` deletes the placeholders, best effort: a replica that dies
without it leaves them to the next leader, which brings the pool to its own size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from huskies_agent.backoff import Backoff
from huskies_agent.engine import node, pool
from huskies_agent.engine.context import Context
from huskies_agent.engine.ports import PodApi
from huskies_agent.k8s import warmpod
from huskies_agent.k8s.errors import NotFound

log = logging.getLogger("huskies_agent.engine.warm")


class WarmPool:
    def __init__(self, ctx: Context, pods: PodApi) -> None:
        self.ctx = ctx
        self.pods = pods
        self.wake = asyncio.Event()
        #: Set once the engine stops: the pool's size is 0 from then on.
        self.draining = False
        self._selector = warmpod.selector(ctx.settings, ctx.me)

    def kick(self) -> None:
        """Look again soon (from sync callbacks too: only sets an event)."""
        self.wake.set()

    def wanted(self) -> int:
        ctx = self.ctx
        held = ctx.node.paused(ctx.mono()) is not None or ctx.node.budget_reached
        return pool.desired(warm_slots=ctx.settings.build.warm_slots, max_concurrent=ctx.settings.max_concurrent,
                            busy=ctx.table.busy, draining=self.draining or held)

    async def run(self) -> None:
        """Reconcile until cancelled."""
        backoff = Backoff(minimum=0.5, maximum=30.0)
        while True:
            self.wake.clear()
            delay = self.ctx.settings.resync_interval_seconds
            try:
                await self.reconcile()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning("warm slots: reconcile failed (%s); retrying in %.1fs", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=delay)

    async def reconcile(self) -> pool.Plan:
        """One pass: list this node's placeholders, add or delete to reach the wanted size."""
        ctx = self.ctx
        want = self.wanted()
        listed = await self.pods.list_pods(self._selector)
        slots = [pool.Slot(str((p.get("metadata") or {}).get("name") or ""), warmpod.slot_state(p)) for p in listed]
        step = pool.plan(slots, want)
        if step.create or step.delete:
            log.info("warm slots: %d wanted, %d live; creating %d, deleting %d", want,
                     sum(s.state is not warmpod.SlotState.GOING for s in slots), step.create, len(step.delete))
        for name in step.delete:
            with contextlib.suppress(NotFound):
                await self.pods.delete_pod(name)
        for _ in range(step.create):
            await self.pods.create_pod(warmpod.build_placeholder(ctx.settings, ctx.me))
        self._publish(pool.tally(slots, step, ctx.table.busy))  # same count as node.room compares with
        return step

    def _publish(self, tally: pool.Tally) -> None:
        ctx = self.ctx
        ctx.metrics.warm_slots.labels("ready").set(tally.ready)
        ctx.metrics.warm_slots.labels("waiting").set(tally.waiting + tally.unschedulable)
        if tally != ctx.warm:
            ctx.warm = tally
            node.write_presence(ctx)  # other nodes rank by warm slots: tell them now
            ctx.capacity_changed()  # and this node may have room it did not see (node.room)

    async def drain(self, timeout: float = 5.0) -> None:
        """Delete every placeholder of this node (the engine is stopping)."""
        self.draining = True
        try:
            async with asyncio.timeout(timeout):
                for p in await self.pods.list_pods(self._selector):
                    with contextlib.suppress(NotFound):
                        await self.pods.delete_pod(str((p.get("metadata") or {}).get("name") or ""))
        except Exception as exc:  # best effort: the next leader shrinks what is left
            log.warning("warm slots: could not delete the placeholders on the way out (%s)", exc)
        self.ctx.warm = pool.Tally()
