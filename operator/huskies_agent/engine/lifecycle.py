"""Starting and ending runs: the only code that creates Jobs, deletes them on an
ending, writes a run's outcome to the document and records it on its StoryJob.

Every path that ends a run (finished Job, stuck pod, lost claim, vanished Job,
failed start) goes through :func:`end_run` with an ``outcomes.Outcome``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from huskies_agent.engine.context import Context
from huskies_agent.engine.outcomes import DocAction, Outcome, StartFailed, Timeouts, Written, decide, describe
from huskies_agent.engine.phases import Phase
from huskies_agent.engine.runs import Run
from huskies_agent.k8s import objects
from huskies_agent.k8s.api import ApiException, is_conflict, is_not_found

log = logging.getLogger("huskies_agent.engine")


def timeouts(ctx: Context) -> Timeouts:
    return Timeouts(stuck_cooldown=ctx.settings.pending_timeout_seconds)


# ---------------------------------------------------------------------- starting

async def start_run(ctx: Context, spec: objects.RunSpec, seen: float) -> None:
    """Create the StoryJob and its Job (idempotent by name) for a confirmed claim."""
    sid = spec.story_id
    table = ctx.table
    failure: StartFailed | None = None
    async with table.locks[sid], ctx.create_slots:
        if sid in table.runs:
            return
        run = Run(spec=spec, started=seen)
        table.runs[sid] = run
        try:
            try:
                sj = await ctx.kube.create_storyjob(objects.build_storyjob(ctx.settings, spec))
            except ApiException as exc:
                if not is_conflict(exc):
                    raise
                sj = await ctx.kube.get_storyjob(spec.name)
                earlier = Phase.parse((sj.get("status") or {}).get("phase"))
                if earlier is not None and earlier.final:
                    # This claim already ran to the end (we crashed before the document
                    # heard of it): apply its outcome instead of running the story again.
                    table.runs.pop(sid, None)
                    settle_finished_claim(ctx, spec, earlier)
                    return
            run.storyjob = sj
            uid = (sj.get("metadata") or {}).get("uid")
            try:
                await ctx.kube.create_job(objects.build_job(ctx.settings, spec, uid))
                ctx.metrics.jobs_created.inc()
            except ApiException as exc:
                if not is_conflict(exc):
                    raise
            run.job_created = True
            ctx.metrics.claim_to_job.observe(ctx.mono() - seen)
        except Exception as exc:
            # Quota, a bad build setting (4xx) or a flaky API: give the story back, and
            # for a 4xx do not try it here again soon (others may have room).
            log.error("could not start story %s: %s", sid, exc)
            why = exc.message if isinstance(exc, ApiException) else str(exc)
            failure = StartFailed(why, client_error=isinstance(exc, ApiException) and 400 <= exc.status < 500)
    if failure is not None:
        await end_run(ctx, run, decide(failure, timeouts=timeouts(ctx)))
        return
    log.info("started story %s (stage %s, epoch %d) as job %s", sid, spec.stage, spec.epoch, spec.name)
    ctx.spawn(_after_start(ctx, run), f"started:{sid}")
    # The claim may have been lost while we were creating objects.
    ctx.mark_dirty([sid])


def settle_finished_claim(ctx: Context, spec: objects.RunSpec, phase: Phase) -> None:
    now = ctx.clock()
    if phase is Phase.SUCCEEDED:
        moved = ctx.doc.complete(spec.story_id, ctx.me, spec.epoch, now)
        log.info("story %s: claim %d had already succeeded; moved to %s", spec.story_id, spec.epoch, moved)
    else:
        ctx.doc.release(spec.story_id, ctx.me, now)
        log.info("story %s: claim %d had already ended %s; released", spec.story_id, spec.epoch, phase)


async def _after_start(ctx: Context, run: Run) -> None:
    assert run.storyjob is not None
    async with ctx.followup_slots:
        await patch_run_status(ctx, run, {"phase": Phase.PENDING.value, "jobName": run.spec.name,
                                          "startedAt": iso(ctx.clock())})
        await ctx.kube.post_event(
            run.storyjob, reason="Claimed",
            message=f"node {ctx.me} claimed story {run.spec.story_id} ({run.spec.stage}, epoch "
                    f"{run.spec.epoch}) and created job {run.spec.name}")


async def mark_running(ctx: Context, run: Run) -> None:
    if run.phase is not Phase.PENDING:
        return
    run.phase = Phase.RUNNING
    async with ctx.followup_slots:
        await patch_run_status(ctx, run, {"phase": Phase.RUNNING.value, "jobName": run.spec.name})


# ---------------------------------------------------------------------- ending

async def end_run(ctx: Context, run: Run, outcome: Outcome, *, seen: float | None = None) -> bool:
    """End ``run`` with ``outcome``: delete its Job if asked, write the document, record it.

    Returns False when the run had already ended (or the Job could not be deleted:
    the next resync tries again).
    """
    sid = run.spec.story_id
    table = ctx.table
    async with table.locks[sid]:
        if not table.is_current(run):
            return False
        run.ending = True
        if outcome.delete_job:
            try:
                await ctx.kube.delete_job(run.spec.name)
            except Exception as exc:
                log.error("could not delete job %s: %s", run.spec.name, exc)
                run.ending = False
                return False
            if seen is not None:
                ctx.metrics.lost_to_deleted.observe(ctx.mono() - seen)
            ctx.metrics.jobs_deleted.labels(outcome.phase.value.lower()).inc()
        elif run.job_created:
            label = outcome.phase.value.lower()
            ctx.metrics.jobs_finished.labels(label).inc()
            ctx.metrics.job_duration.labels(label).observe(ctx.mono() - run.started)
        written = apply_action(ctx, run.spec, outcome.action, reason=outcome.reason)
        table.cool(sid, ctx.mono(), outcome.cooldown)
        table.runs.pop(sid, None)
    run.phase = outcome.phase
    words = describe(outcome, story_id=sid, stage=run.spec.stage, job=run.spec.name, written=written,
                     max_retries=ctx.settings.max_retries)
    level = logging.WARNING if outcome.delete_job else logging.INFO
    log.log(level, "story %s (job %s): %s", sid, run.spec.name, words.message)
    if outcome.action is not DocAction.NONE and not await ctx.sync.confirm(ctx.settings.confirm_timeout_seconds):
        log.warning("rendezvous has not confirmed the result of %s yet; it syncs on reconnect", sid)
    if run.storyjob is not None:
        status: dict[str, Any] = {"phase": outcome.phase.value, "reason": words.reason,
                                  "finishedAt": iso(ctx.clock()), **outcome.status}
        await patch_run_status(ctx, run, status)
        await ctx.kube.post_event(run.storyjob, reason=words.event, message=words.message, warning=outcome.warning)
    ctx.capacity_changed()
    return True


def apply_action(ctx: Context, spec: objects.RunSpec, action: DocAction, *, reason: str = "") -> Written:
    """The outcome's one document write, conditioned on the claim still being ours."""
    now = ctx.clock()
    sid = spec.story_id
    if action is DocAction.ADVANCE:
        return Written(new_stage=ctx.doc.complete(sid, ctx.me, spec.epoch, now))
    if action is DocAction.COUNT_FAILURE:
        counted = ctx.doc.record_failure(sid, ctx.me, spec.epoch, now, reason=reason,
                                         max_retries=ctx.settings.max_retries)
        return Written(retries=counted[0], blocked=counted[1]) if counted else Written()
    if action is DocAction.RELEASE:
        ctx.doc.release(sid, ctx.me, now)
    return Written()


# ---------------------------------------------------------------------- status

async def patch_run_status(ctx: Context, run: Run, status: Mapping[str, Any]) -> None:
    phase = Phase.parse(status.get("phase")) or Phase.PENDING
    async with run.status_lock:
        if phase.rank < run.written_rank or (phase.final and run.written_rank == Phase.SUCCEEDED.rank):
            return
        run.written_rank = phase.rank
        await patch_status(ctx, run.spec.name, status)


async def patch_status(ctx: Context, name: str, status: Mapping[str, Any], *, missing_ok: bool = True) -> None:
    try:
        await ctx.kube.patch_storyjob_status(name, status)
    except ApiException as exc:
        if not (missing_ok and is_not_found(exc)):
            log.warning("could not update storyjob %s status: %s", name, exc.reason)


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
