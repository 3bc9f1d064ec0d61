"""Recovery: adopt what survived a restart or failover, and clean up what is over."""

from __future__ import annotations

import calendar
import logging
import time
from typing import Any

from huskies_agent import claims
from huskies_agent.engine import lifecycle, observe
from huskies_agent.engine.context import Context
from huskies_agent.engine.phases import Phase
from huskies_agent.engine.runs import Run
from huskies_agent.k8s import objects
from huskies_agent.k8s.api import ApiException, is_not_found

log = logging.getLogger("huskies_agent.engine")


async def adopt(ctx: Context) -> None:
    """After a restart or failover: keep what is still ours, delete what is not."""
    storyjobs = await ctx.kube.list_storyjobs(ctx.selector)
    jobs = {j["metadata"]["name"]: j for j in await ctx.kube.list_jobs(ctx.selector)}
    adopted = deleted = 0
    for sj in storyjobs:
        spec = objects.run_spec_from_object(sj)
        if spec is None or spec.node != ctx.me:
            continue
        phase = Phase.parse((sj.get("status") or {}).get("phase")) or Phase.PENDING
        if phase.final:
            continue
        job = jobs.get(spec.name)
        current = ctx.table.get(spec.story_id)
        if current is not None and current.spec.epoch >= spec.epoch:
            continue  # adopted by an earlier attempt of this adoption
        own = claims.check_ownership(ctx.doc.story(spec.story_id), me=ctx.me, epoch=spec.epoch, stage=spec.stage)
        if own.keep:
            adopted += 1
            if job is None:
                await lifecycle.start_run(ctx, spec, ctx.mono())
                continue
            run = Run(spec=spec, started=ctx.mono(), phase=phase, storyjob=sj, job_created=True)
            ctx.table.runs[spec.story_id] = run
            if objects.job_condition(job) is not None:
                ctx.spawn(observe.finish(ctx, run, job), f"finish:{spec.story_id}")
            continue
        if job is not None and objects.job_condition(job) is None:
            await ctx.kube.delete_job(spec.name)
            deleted += 1
        await lifecycle.patch_status(ctx, spec.name, {"phase": Phase.LOST.value,
                                                      "reason": f"after restart: {own.reason}",
                                                      "finishedAt": lifecycle.iso(ctx.clock())})
    log.info("adoption: %d runs adopted, %d stale jobs deleted", adopted, deleted)


def release_dead_claims(ctx: Context) -> None:
    """Work held by dead nodes: take it (the dispatcher does) or, without room, free it."""
    now = ctx.clock()
    dead = claims.dead_claims(ctx.doc.stories.values(), me=ctx.me, nodes=ctx.doc.nodes, now=now,
                              claim_timeout=ctx.settings.claim_timeout_seconds)
    for story in dead[ctx.free:]:
        if ctx.doc.release(story.story_id, story.claimed_by, now, bump_epoch=True):
            log.info("released story %s held by dead node %s", story.story_id, story.claimed_by)
            ctx.metrics.claims.labels("released").inc()


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
        if phase is None or not phase.final:
            continue
        finished = parse_iso(status.get("finishedAt"))
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
