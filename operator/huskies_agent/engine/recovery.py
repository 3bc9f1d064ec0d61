"""Recovery: adopt what survived a restart or failover, and clean up what is over."""

from __future__ import annotations

import calendar
import logging
import time
from typing import Any

from huskies_agent import claims
from huskies_agent.engine import lifecycle, node, observe
from huskies_agent.engine.context import Context
from huskies_agent.engine.holds import utc
from huskies_agent.engine.outcomes import JobGone, decide, unrecorded
from huskies_agent.engine.phases import Phase
from huskies_agent.engine.runs import Run
from huskies_agent.k8s import objects
from huskies_agent.k8s.api import ApiException, is_not_found
from huskies_agent.spend import SpendLedger, day_end

log = logging.getLogger("huskies_agent.engine")


async def adopt(ctx: Context) -> None:
    """After a restart or failover: keep what is still ours, delete what is not, and
    finish recording outcomes whose document write was never confirmed."""
    storyjobs = await ctx.kube.list_storyjobs(ctx.selector)
    jobs = {j["metadata"]["name"]: j for j in await ctx.kube.list_jobs(ctx.selector)}
    rebuild_ledger(ctx, storyjobs)
    adopted = deleted = settled = 0
    for sj in storyjobs:
        spec = objects.run_spec_from_object(sj)
        if spec is None or spec.node != ctx.me:
            continue
        status = sj.get("status") or {}
        phase = Phase.parse(status.get("phase")) or Phase.PENDING
        if not phase.final and sj["metadata"]["name"] != spec.name:
            await _hand_off_legacy(ctx, spec, sj, jobs.get(sj["metadata"]["name"]))
            settled += 1
            continue
        if phase.final:
            if unrecorded(status) is not None:
                lifecycle.settle_unrecorded(ctx, spec, sj)
                settled += 1
            continue
        job = jobs.get(spec.name)
        current = ctx.table.get(spec.story_id)
        if current is not None and current.spec.epoch >= spec.epoch:
            continue  # adopted by an earlier attempt of this adoption
        own = claims.check_ownership(ctx.doc.story(spec.story_id), me=ctx.me, epoch=spec.epoch, stage=spec.stage)
        if own.keep:
            adopted += 1
            if job is None and not status.get("jobCreated"):
                await lifecycle.start_run(ctx, spec, ctx.mono())  # crashed between StoryJob and Job
                continue
            run = Run(spec=spec, started=ctx.mono(), phase=phase, storyjob=sj, job_created=True,
                      written_rank=phase.rank)
            ctx.table.runs[spec.story_id] = run
            if job is None:
                # Its Job was created and is gone: never create it again (it may have run).
                ctx.spawn(lifecycle.end_run(ctx, run, decide(JobGone())), f"gone:{spec.story_id}")
            elif objects.job_condition(job) is not None:
                ctx.spawn(observe.finish(ctx, run, job), f"finish:{spec.story_id}")
            continue
        if job is not None and objects.job_condition(job) is None:
            await ctx.kube.delete_job(spec.name)
            deleted += 1
        await lifecycle.patch_status(ctx, spec.name, {"phase": Phase.LOST.value,
                                                      "reason": f"after restart: {own.reason}",
                                                      "action": "none", "recorded": True,
                                                      "finishedAt": lifecycle.iso(ctx.clock())})
    log.info("adoption: %d runs adopted, %d stale jobs deleted, %d outcomes to record", adopted, deleted, settled)


def rebuild_ledger(ctx: Context, storyjobs: list[dict[str, Any]]) -> None:
    """The spend ledger after a restart: each finished StoryJob's cost at its ``finishedAt``.

    Built afresh from the listing (no await in between), so a retried adoption never
    counts a run twice; runs that end later are recorded as they end.
    """
    ctx.node.ledger = SpendLedger(ctx.settings.daily_budget_usd)
    for sj in storyjobs:
        spec = objects.run_spec_from_object(sj)
        status = sj.get("status") or {}
        phase = Phase.parse(status.get("phase"))
        result = status.get("result")
        if spec is None or spec.node != ctx.me or phase is None or not phase.final or not isinstance(result, dict):
            continue
        finished = parse_iso(status.get("finishedAt"))
        node.record_cost(ctx, spec.stage, result, ctx.clock() if finished is None else finished, count=False)


async def _hand_off_legacy(ctx: Context, spec: objects.RunSpec, sj: dict[str, Any],
                           job: dict[str, Any] | None) -> None:
    """A run started by a version that named objects differently: the engine cannot follow
    it under its old name, so it is stopped (the runner checkpoints on SIGTERM) and its
    claim released, and the story runs again under the current naming."""
    name = sj["metadata"]["name"]
    if job is not None:
        await ctx.kube.delete_job(name)
    status = {"phase": Phase.RELEASED.value, "reason": "operator upgraded: run handed off", "action": "release",
              "recorded": False, "finishedAt": lifecycle.iso(ctx.clock())}
    await lifecycle.patch_status(ctx, name, status)
    lifecycle.settle_unrecorded(ctx, spec, {**sj, "status": status})


async def cleanup_finished(ctx: Context) -> None:
    """Delete final StoryJobs (and through their owner reference, their Jobs) after the TTL."""
    try:
        storyjobs = await ctx.kube.list_storyjobs(ctx.selector)
    except ApiException as exc:
        log.warning("could not list storyjobs for clean-up: %s", exc.reason)
        return
    now = ctx.clock()
    for sj in storyjobs:
        status: dict[str, Any] = sj.get("status") or {}
        phase = Phase.parse(status.get("phase"))
        if phase is None or not phase.final or unrecorded(status) is not None:
            continue  # an unrecorded outcome is kept until the document has it
        finished = parse_iso(status.get("finishedAt"))
        if finished is not None and ctx.node.ledger.limited and now < day_end(utc(finished)).timestamp():
            continue  # its cost counts towards today's budget after a restart: keep it until the day ends
        if finished is not None and now - finished > ctx.settings.finished_ttl_seconds:
            try:
                await ctx.kube.delete_storyjob(sj["metadata"]["name"])
            except ApiException as exc:
                if not is_not_found(exc):
                    log.warning("could not delete storyjob %s: %s", sj["metadata"]["name"], exc.reason)


def parse_iso(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None
