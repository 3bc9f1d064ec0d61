"""Starting and ending runs: the only code that creates Jobs, deletes them on an
ending, writes a run's outcome to the document and records it on its StoryJob.

Every path that ends a run (finished Job, stuck pod, lost claim, vanished Job,
failed start) goes through :func:`end_run` with an ``outcomes.Outcome``. The final
phase is written on the StoryJob at once with ``recorded: false``; the document write
waits until the rendezvous link is up (I4), is confirmed with backoff, and only then
is the StoryJob marked ``recorded: true``. A restart finishes what is unrecorded
(``recovery.adopt``), so a finished claim is never run twice and never forgotten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from huskies_agent.backoff import Backoff
from huskies_agent.engine import conditions, node
from huskies_agent.engine.context import Context
from huskies_agent.engine.outcomes import (
    DocAction,
    JobGone,
    Outcome,
    StartFailed,
    Timeouts,
    Written,
    decide,
    describe,
    status_fields,
    unrecorded,
)
from huskies_agent.engine.phases import Phase
from huskies_agent.engine.runs import Run
from huskies_agent.engine.timing import StartTiming
from huskies_agent.k8s import objects
from huskies_agent.k8s.api import ApiException, is_conflict, is_not_found

log = logging.getLogger("huskies_agent.engine")


class NameTaken(Exception):
    """A StoryJob of this run's name exists for a different run."""


def timeouts(ctx: Context) -> Timeouts:
    return Timeouts(stuck_cooldown=ctx.settings.pending_timeout_seconds)


# ---------------------------------------------------------------------- starting

async def start_run(ctx: Context, spec: objects.RunSpec, seen: float, *, confirmed: float | None = None,
                    timing: StartTiming | None = None) -> None:
    """Create the StoryJob and its Job (idempotent by name) for a confirmed claim
    (``confirmed``: when the claim was confirmed, for the claim-to-running latency;
    ``timing``: the claim's way so far, logged with the start)."""
    ctx.start_begins()
    try:
        await _start(ctx, spec, seen, confirmed, timing or StartTiming())
    finally:
        ctx.start_ends()


async def _start(ctx: Context, spec: objects.RunSpec, seen: float, confirmed: float | None,
                 timing: StartTiming) -> None:
    sid = spec.story_id
    table = ctx.table
    failure: StartFailed | None = None
    gone = False
    async with table.locks[sid], ctx.create_slots:
        timing.slot = ctx.mono()
        if sid in table.runs or sid in table.pending:
            return
        run = Run(spec=spec, started=seen, claimed_at=confirmed)
        table.runs[sid] = run
        try:
            sj, job_made = await _storyjob_for(ctx, spec)
            timing.storyjob = ctx.mono()
            if sj is None:
                table.runs.pop(sid, None)
                return
            run.storyjob = sj
            if job_made:
                gone = not await _job_exists(ctx, spec.name)
            else:
                uid = (sj.get("metadata") or {}).get("uid")
                try:
                    await ctx.kube.create_job(objects.build_job(ctx.settings, spec, uid))
                    ctx.metrics.jobs_created.inc()
                except ApiException as exc:
                    if not is_conflict(exc):
                        raise
            run.job_created = True
            timing.job = ctx.mono()
            ctx.metrics.claim_to_job.observe(timing.job - seen)
        except Exception as exc:
            # Quota, a bad build setting (4xx) or a flaky API: give the story back, and
            # for a 4xx do not try it here again soon (others may have room).
            log.error("could not start story %s: %s", sid, exc)
            why = exc.message if isinstance(exc, ApiException) else str(exc)
            failure = StartFailed(why, client_error=isinstance(exc, ApiException) and 400 <= exc.status < 500)
    if failure is not None or gone:
        await end_run(ctx, run, decide(failure or JobGone(), timeouts=timeouts(ctx)))
        return
    log.info("started story %s (stage %s, epoch %d) as job %s", sid, spec.stage, spec.epoch, spec.name,
             extra={"story": sid, **timing.log_fields()})
    ctx.spawn(_after_start(ctx, run), f"started:{sid}")
    # The claim may have been lost while we were creating objects.
    ctx.mark_dirty([sid])


async def _storyjob_for(ctx: Context, spec: objects.RunSpec) -> tuple[dict[str, Any] | None, bool]:
    """The run's StoryJob, created or found; ``(None, _)`` when that run already ended.

    The second value says whether the StoryJob's status records that its Job was
    created (such a Job is never created again: a missing one was deleted).
    """
    try:
        return await ctx.kube.create_storyjob(objects.build_storyjob(ctx.settings, spec)), False
    except ApiException as exc:
        if not is_conflict(exc):
            raise
    sj = await ctx.kube.get_storyjob(spec.name)
    # Accept only the very same run: same story, stage, node and epoch.
    if objects.run_spec_from_object(sj) != spec:
        raise NameTaken(f"storyjob {spec.name} exists for another run ({(sj.get('spec') or {})!r})")
    status = sj.get("status") or {}
    phase = Phase.parse(status.get("phase"))
    if phase is not None and phase.final:
        # This claim already ran to the end (we crashed before the document heard of
        # it): finish recording its outcome instead of running the story again.
        log.info("story %s: claim %d of %s had already ended %s", spec.story_id, spec.epoch, spec.stage, phase)
        settle_unrecorded(ctx, spec, sj, release=True)
        return None, True
    return sj, bool(status.get("jobCreated"))


async def _job_exists(ctx: Context, name: str) -> bool:
    try:
        await ctx.kube.get_job(name)
        return True
    except ApiException as exc:
        if is_not_found(exc):
            return False
        raise


async def _after_start(ctx: Context, run: Run) -> None:
    assert run.storyjob is not None
    async with ctx.followup():
        await patch_run_status(ctx, run, {"phase": Phase.PENDING.value, "jobName": run.spec.name,
                                          "jobCreated": True, "startedAt": iso(ctx.clock())})
        await ctx.kube.post_event(
            run.storyjob, reason="Claimed",
            message=f"node {ctx.me} claimed story {run.spec.story_id} ({run.spec.stage}, epoch "
                    f"{run.spec.epoch}) and created job {run.spec.name}")


async def mark_running(ctx: Context, run: Run) -> None:
    if run.phase is not Phase.PENDING:
        return
    run.phase = Phase.RUNNING
    async with ctx.followup():
        await patch_run_status(ctx, run, {"phase": Phase.RUNNING.value, "jobName": run.spec.name})


# ---------------------------------------------------------------------- ending

async def end_run(ctx: Context, run: Run, outcome: Outcome, *, seen: float | None = None) -> bool:
    """End ``run`` with ``outcome``: delete its Job if asked, record the final phase,
    then write the document (see the module docstring).

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
                deleted = ctx.mono()
                ctx.metrics.lost_to_deleted.observe(deleted - seen)
                log.info("deleted job %s of story %s", run.spec.name, sid,
                         extra={"story": sid, "t_decided": round(seen, 6), "t_deleted": round(deleted, 6)})
            ctx.metrics.jobs_deleted.labels(outcome.phase.value.lower()).inc()
        elif run.job_created:
            label = outcome.phase.value.lower()
            ctx.metrics.jobs_finished.labels(label).inc()
            ctx.metrics.job_duration.labels(label).observe(ctx.mono() - run.started)
        outcome = node.note_ending(ctx, run.spec, outcome)
        table.cool(sid, ctx.mono(), outcome.cooldown)
        table.runs.pop(sid, None)
        if outcome.action is not DocAction.NONE:
            table.pending[sid] = run.spec
    run.phase = outcome.phase
    if run.storyjob is not None:
        await patch_run_status(ctx, run, {**status_fields(outcome), "finishedAt": iso(ctx.clock())})
    if outcome.action is DocAction.NONE:
        await _announce(ctx, run.spec, run.storyjob, outcome, Written())
        ctx.mark_dirty([sid])  # e.g. moved by hand to another active stage: claim that now
        ctx.capacity_changed()
    else:
        ctx.spawn(record(ctx, run.spec, run.storyjob, outcome), f"record:{sid}")
    return True


def settle_unrecorded(ctx: Context, spec: objects.RunSpec, storyjob: dict[str, Any], *,
                      release: bool = False) -> None:
    """Finish recording the outcome of a final StoryJob whose document write is unconfirmed.

    With ``release``, a recorded outcome still releases the claim (a no-op unless the
    claim at that epoch is somehow still ours), so an ended run never holds a story.
    """
    status = storyjob.get("status") or {}
    outcome = unrecorded(status)
    if outcome is None and release:
        phase = Phase.parse(status.get("phase")) or Phase.CANCELLED
        outcome = Outcome(phase, str(status.get("reason") or "run already ended"), DocAction.RELEASE, phase.value)
    if outcome is None or spec.story_id in ctx.table.pending:
        return
    ctx.table.pending[spec.story_id] = spec
    ctx.spawn(record(ctx, spec, storyjob, outcome), f"record:{spec.story_id}")


async def record(ctx: Context, spec: objects.RunSpec, storyjob: Mapping[str, Any] | None, outcome: Outcome) -> None:
    """Write the outcome to the document once the link is up, confirm it with backoff, mark it recorded."""
    backoff = Backoff(minimum=max(0.1, ctx.settings.confirm_timeout_seconds), maximum=30.0)
    written: Written | None = None
    try:
        while True:
            await ctx.wait_link()
            if written is None:
                written = apply_action(ctx, spec, outcome.action, reason=outcome.reason)
            if await ctx.sync.confirm(ctx.settings.confirm_timeout_seconds):
                break
            delay = backoff.next_delay()
            log.warning("rendezvous has not confirmed the outcome of %s yet; trying again in %.1fs",
                        spec.story_id, delay)
            await ctx.sleep(delay)
    finally:
        ctx.table.pending.pop(spec.story_id, None)
    words = await _announce(ctx, spec, storyjob, outcome, written)
    if storyjob is not None:
        name = str((storyjob.get("metadata") or {}).get("name") or spec.name)
        await patch_status(ctx, name, {"recorded": True, "reason": words})
    ctx.mark_dirty([spec.story_id])
    node.claim_pause(ctx)  # spend and what is in flight changed: the pause state may have too
    ctx.capacity_changed()


async def _announce(ctx: Context, spec: objects.RunSpec, storyjob: Mapping[str, Any] | None, outcome: Outcome,
                    written: Written) -> str:
    """Log and post the Event of an ending; returns the final status reason."""
    words = describe(outcome, story_id=spec.story_id, stage=spec.stage, job=spec.name, written=written,
                     max_retries=ctx.settings.max_retries)
    level = logging.WARNING if outcome.delete_job else logging.INFO
    log.log(level, "story %s (job %s): %s", spec.story_id, spec.name, words.message)
    if storyjob is not None:
        await ctx.kube.post_event(storyjob, reason=words.event, message=words.message, warning=outcome.warning)
    return words.reason


def apply_action(ctx: Context, spec: objects.RunSpec, action: DocAction, *, reason: str = "") -> Written:
    """The outcome's one document write, conditioned on the claim still being ours."""
    now = ctx.clock()
    sid = spec.story_id
    if action is DocAction.ADVANCE:
        return Written(new_stage=ctx.doc.complete(sid, ctx.me, spec.epoch, spec.stage, now))
    if action is DocAction.COUNT_FAILURE:
        counted = ctx.doc.record_failure(sid, ctx.me, spec.epoch, spec.stage, now, reason=reason,
                                         max_retries=ctx.settings.max_retries)
        return Written(retries=counted[0], blocked=counted[1]) if counted else Written()
    if action is DocAction.RELEASE:
        ctx.doc.release(sid, ctx.me, now)
    return Written()


# ---------------------------------------------------------------------- status

async def patch_run_status(ctx: Context, run: Run, status: Mapping[str, Any]) -> None:
    """Status writes of a run never go back (Pending < Running < final, one final).
    Each carries the run's conditions (``conditions.implied`` by the fields written)."""
    phase = Phase.parse(status.get("phase")) or Phase.PENDING
    async with run.status_lock:
        if phase.rank < run.written_rank or (phase.final and run.written_rank == Phase.SUCCEEDED.rank):
            return
        run.written_rank = phase.rank
        await _patch(ctx, run.spec.name, _with_conditions(ctx, run, status, conditions.implied(status)))


async def note_condition(ctx: Context, run: Run, condition: conditions.Condition) -> None:
    """Write one observed condition (e.g. PodScheduled) of a run still in progress, if it changed."""
    async with run.status_lock:
        if run.written_rank >= Phase.SUCCEEDED.rank:
            return
        old = conditions.find(_seed(run), condition.type)
        if old is not None and (old.get("status"), old.get("reason")) == (condition.status.value, condition.reason):
            return
        async with ctx.followup():
            await _patch(ctx, run.spec.name, _with_conditions(ctx, run, {}, [condition]))


def _seed(run: Run) -> list[dict[str, Any]]:
    if not run.conditions and run.storyjob is not None:  # adopted: continue from what is written
        run.conditions = list(((run.storyjob.get("status") or {}).get("conditions")) or [])
    return run.conditions


def _with_conditions(ctx: Context, run: Run, status: Mapping[str, Any],
                     updates: list[conditions.Condition]) -> dict[str, Any]:
    generation = conditions.generation_of(run.storyjob)
    run.conditions = conditions.merge(_seed(run), updates, now=iso(ctx.clock()), generation=generation)
    body = {**status, "conditions": run.conditions}
    if generation is not None:
        body["observedGeneration"] = generation
    return body


async def patch_status(ctx: Context, name: str, status: Mapping[str, Any], *, missing_ok: bool = True) -> None:
    """A status write outside a live run (recording, recovery): the conditions written so far are
    read back first, so that the ones this write implies join them."""
    try:
        current = await ctx.kube.get_storyjob(name)
    except ApiException as exc:
        if not (missing_ok and is_not_found(exc)):
            log.warning("could not read storyjob %s for its status update: %s", name, exc.reason)
        return
    generation = conditions.generation_of(current)
    existing = (current.get("status") or {}).get("conditions") or []
    body = {**status, "conditions": conditions.merge(existing, conditions.implied(status), now=iso(ctx.clock()),
                                                     generation=generation)}
    if generation is not None:
        body["observedGeneration"] = generation
    await _patch(ctx, name, body, missing_ok=missing_ok)


async def _patch(ctx: Context, name: str, status: Mapping[str, Any], *, missing_ok: bool = True) -> None:
    try:
        await ctx.kube.patch_storyjob_status(name, status)
    except ApiException as exc:
        if not (missing_ok and is_not_found(exc)):
            log.warning("could not update storyjob %s status: %s", name, exc.reason)


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
