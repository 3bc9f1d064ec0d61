"""Node-level holds on claiming, applied: a refused API key, an unavailable model API, the daily budget.

The state is ``holds.NodeState`` (``ctx.node``); :func:`claim_pause` is the
check made before claiming, with its effects (gauge, presence, one Event when the daily
budget is reached); :func:`note_ending` applies what an ending run says about the node
(holds, the spend ledger, cost and turns metrics); :func:`write_presence` says the state
in this node's presence entry.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from huskies_agent.engine import pool
from huskies_agent.engine.context import Context
from huskies_agent.engine.holds import Pause, utc
from huskies_agent.engine.outcomes import DocAction, Outcome
from huskies_agent.k8s import objects
from huskies_agent.pipeline.model import NodePresence
from huskies_agent.spend import SpendError

log = logging.getLogger("huskies_agent.engine")


# ---------------------------------------------------------------------- before claiming

def committed_usd(ctx: Context) -> float:
    """What runs in flight may still spend: each is bounded by the per-run budget."""
    return ctx.table.busy * ctx.settings.build.max_budget_usd


def budget_room(ctx: Context) -> int:
    """How many more runs may start now: free slots, and no more than the day's budget allows
    when each run may spend up to the per-run budget (``SpendLedger.may_claim`` per run)."""
    now = utc(ctx.clock())
    room = 0
    while room < ctx.free and ctx.node.ledger.may_claim(
            now, (ctx.table.busy + room) * ctx.settings.build.max_budget_usd):
        room += 1
    return room


def room(ctx: Context, *, held: bool = False) -> pool.Advert:
    """Free slots that can start, and how many of them at once (``pool.advertise``): on a cluster
    that cannot add nodes, where a warm placeholder found no node, only the warm ones."""
    return pool.advertise(free=ctx.free, pool=ctx.warm, busy=ctx.table.busy,
                          can_scale=ctx.settings.build.can_scale, held=held)


def claim_pause(ctx: Context) -> tuple[Pause, float | None] | None:
    """Why this node may claim nothing now, and when to look again (``None``: on a change)."""
    node = ctx.node
    held = node.paused(ctx.mono())
    now = utc(ctx.clock())
    committed = committed_usd(ctx)
    reached = not node.ledger.may_claim(now, committed)
    status = node.ledger.status(now, committed)
    changed = reached != node.budget_reached or status != node.budget_status
    node.budget_status = status
    if reached != node.budget_reached:
        node.budget_reached = reached
        if reached:
            log.warning("%s", status)
            ctx.spawn(_budget_event(ctx, status), "budget-event")
        else:
            log.info("daily budget: claiming again (%s spent today)", f"${node.ledger.spent_today(now):.2f}")
    for kind in Pause:
        active = (kind is Pause.DAILY_BUDGET and reached) or (held is not None and held[0] is kind)
        ctx.metrics.claiming_paused.labels(kind.value).set(1 if active else 0)
    if changed:
        write_presence(ctx)
    if held is not None:
        return held
    return (Pause.DAILY_BUDGET, None) if reached else None


async def _budget_event(ctx: Context, status: str) -> None:
    """One Event on the newest StoryJob of this node when the daily budget is reached."""
    try:
        storyjobs = await ctx.kube.list_storyjobs(ctx.selector)
    except Exception as exc:
        log.warning("could not list storyjobs for the budget Event: %s", exc)
        return
    if storyjobs:
        newest = max(storyjobs, key=_created)
        await ctx.kube.post_event(newest, reason="DailyBudgetReached", message=f"node {ctx.me}: {status}",
                                  warning=True)


def _created(sj: Mapping[str, Any]) -> tuple[str, str]:
    meta, status = sj.get("metadata") or {}, sj.get("status") or {}
    return str(meta.get("creationTimestamp") or ""), str(status.get("startedAt") or "")


# ---------------------------------------------------------------------- after a run

def note_ending(ctx: Context, spec: objects.RunSpec, outcome: Outcome) -> Outcome:
    """What an ending says about this node: the streak rule, holds, spend and metrics."""
    node = ctx.node
    outcome = node.settle(spec.story_id, outcome, ctx.settings.max_retries)
    result = outcome.status.get("result")
    if isinstance(result, Mapping):
        record_cost(ctx, spec.stage, result, ctx.clock())
        turns = result.get("turns")
        if isinstance(turns, int) and not isinstance(turns, bool) and turns >= 0:
            ctx.metrics.agent_turns.labels(spec.stage).observe(turns)
    if outcome.action is DocAction.ADVANCE:
        node.succeeded()
    seconds = node.hold(outcome.hold, ctx.mono())
    if seconds:
        log.warning("node %s holds claiming for %.0fs: %s", ctx.me, seconds, outcome.reason)
        write_presence(ctx)
    return outcome


def record_cost(ctx: Context, stage: str, result: Mapping[str, Any], finished_at: float, *,
                count: bool = True) -> None:
    """Add a run's ``cost_usd`` to the ledger (and the cost metric); a bad value is logged and counted."""
    cost = result.get("cost_usd")
    if cost is None:
        return
    try:
        if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost):
            raise SpendError(f"cost must be a finite number >= 0, got {cost!r}")
        ctx.node.ledger.record(float(cost), utc(finished_at))
    except SpendError as exc:
        log.warning("story result with a bad cost_usd ignored: %s", exc)
        ctx.metrics.bad_costs.inc()
        return
    if count:
        ctx.metrics.agent_cost.labels(stage).inc(float(cost))


# ---------------------------------------------------------------------- presence

def write_presence(ctx: Context) -> None:
    node = ctx.node
    held = node.paused(ctx.mono())
    pause = held[0] if held is not None else (Pause.DAILY_BUDGET if node.budget_reached else None)
    advert = room(ctx, held=pause is not None)
    extra: dict[str, Any] = {"cluster": ctx.settings.cluster_name, "running": len(ctx.table.runs),
                             "warm": advert.warm, "can_scale": ctx.settings.build.can_scale}
    if pause is not None:
        extra["paused"] = pause.value
    if node.budget_status:
        extra["budget"] = node.budget_status
    ctx.doc.put_presence(NodePresence(
        node_id=ctx.me, last_seen=ctx.clock(), alive=True, address=ctx.settings.advertise_address,
        capacity=advert.capacity, extra=extra,
    ))
