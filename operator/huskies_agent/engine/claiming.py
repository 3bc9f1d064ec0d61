"""Claiming: which changed stories to stop, resume or claim, and the claim writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace

from huskies_agent import claims
from huskies_agent.backoff import Backoff
from huskies_agent.engine import lifecycle, node
from huskies_agent.engine.context import Context
from huskies_agent.engine.outcomes import ClaimLost, decide
from huskies_agent.engine.timing import StartTiming
from huskies_agent.k8s import objects
from huskies_agent.pipeline import stages
from huskies_agent.pipeline.model import Claim, Story

log = logging.getLogger("huskies_agent.engine")

def reconcile(ctx: Context, story_ids: Iterable[str], *, heard: float | None = None) -> None:
    """React to changed stories: stop lost runs, resume our own claims, claim new work
    (``heard``: when the first of these changes was applied, for the start timing)."""
    table = ctx.table
    stories = ctx.doc.stories
    candidates: list[Story] = []
    for sid in story_ids:
        story = stories.get(sid)
        run = table.get(sid)
        if run is not None:
            own = claims.check_ownership(story, me=ctx.me, epoch=run.spec.epoch, stage=run.spec.stage)
            if not own.keep and not run.ending:
                over = story is None or story.stage in stages.FINISHED_STAGES
                # Still ours but moved or finished by someone else: free the claim as well.
                ours = story is not None and story.claim is not None and story.claim.order == (
                    run.spec.epoch, ctx.me)
                outcome = decide(ClaimLost(own.reason, story_over=over, still_ours=ours))
                ctx.spawn(lifecycle.end_run(ctx, run, outcome, seen=ctx.mono()), f"stop:{sid}")
            continue
        if story is None or table.occupied(sid):
            continue
        if story.claim is not None:
            ctx.claimable_since.pop(sid, None)
        if story.stage not in stages.ACTIVE_STAGES:
            continue  # nothing to claim or resume (and not "claimable since" before it is active)
        if story.claimed_by == ctx.me and not story.blocked:
            # Our claim without a run (restart between claim and Job, or a takeover
            # written by this node earlier): run it at that epoch.
            if ctx.free > 0:
                table.claiming.add(sid)
                ctx.spawn(_resume_claim(ctx, story), f"resume:{sid}")
            continue
        candidates.append(story)
    if candidates:
        _claim_candidates(ctx, candidates, heard)


def _claim_candidates(ctx: Context, candidates: list[Story], heard: float | None = None) -> None:
    table = ctx.table
    if not ctx.link_ready():
        # I4: no claim writes while cut off; the link coming back re-checks every story.
        return
    pause = node.claim_pause(ctx)
    if pause is not None:
        # A node-level hold (refused key, unavailable model API, daily budget): claim
        # nothing; look again when the hold ends, or when room or spend changes.
        ids = {s.story_id for s in candidates if stages.is_active(s.stage) and not s.blocked}
        ctx.waiting.update(ids)
        if pause[1] is not None:
            _recheck_later(ctx, ids, pause[1])
        return
    now = ctx.mono()
    for story in candidates:
        ctx.claimable_since.setdefault(story.story_id, now)
    room = node.room(ctx)
    choice = claims.choose_claims(
        candidates, me=ctx.me, stories=ctx.doc.stories, is_dead=ctx.is_dead,
        capacities={node: claims.slot_weight(p.capacity, p.extra.get("warm")) for node, p in ctx.doc.nodes.items()},
        busy=table.busy, max_concurrent=table.busy + min(node.budget_room(ctx), room.capacity),
        cooling=table.cooling(now),
        waited=lambda sid: now - ctx.claimable_since.get(sid, now), spread_delay=ctx.settings.spread_delay_seconds,
        my_warm=room.warm,
    )
    chosen = choice.now
    ids = {s.story_id for s in chosen}
    # Remember stories passed over for lack of room, to look at again when room frees up.
    ctx.waiting.update(s.story_id for s in candidates
                       if s.story_id not in ids and stages.is_active(s.stage) and not s.blocked)
    if choice.recheck_in is not None:
        _recheck_later(ctx, {s.story_id for s in candidates} - ids, choice.recheck_in)
    if chosen:
        for sid in ids:
            ctx.claimable_since.pop(sid, None)
        table.claiming.update(ids)
        ctx.spawn(_claim_batch(ctx, chosen, now, StartTiming(heard=heard, decided=now)), f"claim:{len(ids)}")


def _recheck_later(ctx: Context, story_ids: set[str], delay: float) -> None:
    """Look at stories left for better-ranked nodes again once this node's turn comes."""
    ctx.spreading.update(story_ids)
    due = ctx.mono() + delay
    if ctx.recheck_at is not None and ctx.recheck_at <= due:
        return
    ctx.recheck_at = due

    async def wake() -> None:
        await ctx.sleep(delay)
        if ctx.recheck_at == due:
            ctx.recheck_at = None
            ids, ctx.spreading = ctx.spreading, set()
            ctx.mark_dirty(ids)

    ctx.spawn(wake(), "spread-recheck")


async def _claim_batch(ctx: Context, chosen: list[Story], seen: float, timing: StartTiming) -> None:
    ids = [s.story_id for s in chosen]
    try:
        # The decision was made a loop turn ago: updates applied since (a live node's
        # fresh claim, a removal) must win. No await between this check and the write.
        now = ctx.clock()
        chosen = [
            current for s in chosen
            if (current := ctx.doc.story(s.story_id)) is not None
            and claims.decide(current, me=ctx.me, stories=ctx.doc.stories, is_dead=ctx.is_dead).wants_claim
        ]
        if not chosen or not ctx.link_ready():  # I4, checked again right before the write
            return
        for s in chosen:
            if s.claimed_by:
                log.info("taking over story %s from dead node %s", s.story_id, s.claimed_by)
                ctx.metrics.claims.labels("taken_over").inc()
        written = ctx.doc.claim_many([s.story_id for s in chosen], ctx.me, now)
        timing.written = ctx.mono()
        written = await _confirmed(ctx, written)
        if not written:
            return
        confirmed = timing.confirmed = ctx.mono()
        if ctx.settings.claim_settle_seconds:
            await ctx.sleep(ctx.settings.claim_settle_seconds)
        starts = []
        for sid, claim in written.items():
            story = ctx.doc.story(sid)
            stage = story.stage if story else ""
            own = claims.check_ownership(story, me=ctx.me, epoch=claim.epoch, stage=stage)
            if not own.keep:
                log.info("claim on %s lost before start: %s", sid, own.reason)
                ctx.metrics.claims.labels("lost").inc()
                continue
            ctx.metrics.claims.labels("won").inc()
            starts.append(objects.RunSpec(sid, stage, ctx.me, claim.epoch))
        await asyncio.gather(*(lifecycle.start_run(ctx, spec, seen, confirmed=confirmed, timing=replace(timing))
                               for spec in starts))
    finally:
        ctx.table.claiming.difference_update(ids)
    node.claim_pause(ctx)  # what is in flight changed: the daily budget may be reached now
    ctx.capacity_changed()


async def _confirmed(ctx: Context, written: dict[str, Claim]) -> dict[str, Claim]:
    """Wait until the rendezvous confirms the claims; the ones still winning then.

    An unconfirmed claim is not released (a release is one more write that cannot be
    confirmed either, and releasing and re-claiming would loop): it stays, and is
    confirmed again with backoff until it is, or until it is no longer the winner.
    """
    backoff = Backoff(minimum=max(0.1, ctx.settings.confirm_timeout_seconds), maximum=30.0)
    while written and not await ctx.sync.confirm(ctx.settings.confirm_timeout_seconds):
        ctx.metrics.claims.labels("unconfirmed").inc(len(written))
        delay = backoff.next_delay()
        log.warning("rendezvous did not confirm claims of %d stories; confirming again in %.1fs",
                    len(written), delay)
        await ctx.sleep(delay)
        await ctx.wait_link()
        written = {sid: claim for sid, claim in written.items() if _still_ours(ctx, sid, claim)}
    return written


def _still_ours(ctx: Context, sid: str, claim: Claim) -> bool:
    story = ctx.doc.story(sid)
    return story is not None and claims.check_ownership(
        story, me=ctx.me, epoch=claim.epoch, stage=story.stage).keep


async def _resume_claim(ctx: Context, story: Story) -> None:
    try:
        epoch = story.claim.epoch if story.claim else story.epoch
        await lifecycle.start_run(ctx, objects.RunSpec(story.story_id, story.stage, ctx.me, epoch), ctx.mono())
    finally:
        ctx.table.claiming.discard(story.story_id)
