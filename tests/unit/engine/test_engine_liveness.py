"""Liveness from received presence (I3, I5) and work spreading by rendezvous hashing.

Another node is a second real PipelineDoc whose updates reach the engine's document
as remote updates, the way the sync client applies them."""

from __future__ import annotations

import asyncio

import pytest
from tests.helpers.docpeer import Peer

from huskies_agent import claims


async def test_a_silent_holder_is_taken_over_after_the_claim_timeout_with_a_higher_epoch(make_engine):
    h = make_engine(claim_timeout_seconds=60)
    await h.engine.start()
    peer = Peer(h, "other")
    h.doc.add_story("1_a", stage="2_current")
    peer.beat()
    peer.claim("1_a")  # before the engine looks at the story
    await h.settle()
    h.mono.advance(59)
    await h.engine.resync()
    await h.settle()
    assert h.doc.story("1_a").claimed_by == "other", "a live claim is never taken over"
    h.mono.advance(2)
    await h.engine.resync()
    await h.settle()
    story = h.doc.story("1_a")
    assert story.claimed_by == h.engine.me and story.claim.epoch == 2
    assert h.engine.runs["1_a"].spec.epoch == 2


async def test_a_holder_that_keeps_talking_is_never_taken_over(make_engine):
    h = make_engine(claim_timeout_seconds=60)
    await h.engine.start()
    h.sync.set_link(False)
    h.doc.add_story("1_a", stage="2_current")
    h.sync.set_link(True)
    peer = Peer(h, "other")
    peer.beat()
    peer.claim("1_a")
    for _ in range(10):
        h.mono.advance(30)
        peer.beat()  # the wall-clock last_seen it writes is 0: never compared with ours
        await h.engine.resync()
        await h.settle()
    assert h.doc.story("1_a").claimed_by == "other"


async def test_nobody_is_dead_while_cut_off_nor_within_a_timeout_of_reconnecting(make_engine):
    h = make_engine(claim_timeout_seconds=60)
    await h.engine.start()
    h.sync.set_link(False)
    h.doc.add_story("1_a", stage="2_current")
    h.sync.set_link(True)
    peer = Peer(h, "other")
    peer.beat()
    peer.claim("1_a")
    h.sync.set_link(False)
    h.mono.advance(3600)  # an outage much longer than the claim timeout
    await h.engine.resync()
    await h.settle()
    assert h.doc.story("1_a").claimed_by == "other" and not h.kube.jobs
    h.sync.set_link(True)
    await h.engine.resync()
    await h.settle()
    assert h.doc.story("1_a").claimed_by == "other", "judged dead right after reconnecting"
    h.mono.advance(61)
    await h.engine.resync()
    await h.settle()
    assert h.doc.story("1_a").claimed_by == h.engine.me


def story_ranked_first_by(node, capacities, prefix):
    for i in range(1000):
        sid = f"{i}_{prefix}"
        if claims.rank(sid, capacities)[0] == node:
            return sid
    raise AssertionError("no such story")


async def test_stories_another_node_ranks_first_for_are_left_to_it_first(make_engine):
    h = make_engine(max_concurrent=4)
    await h.engine.start()
    peer = Peer(h, "other")
    peer.beat(capacity=4)
    room = {h.engine.me: 4, "other": 4}
    theirs = story_ranked_first_by("other", room, "theirs")
    ours = story_ranked_first_by(h.engine.me, room, "ours")
    h.engine.ctx.sleep = _never  # hold the re-check timer: look at the first decision only
    h.doc.add_story(theirs, stage="2_current")
    h.doc.add_story(ours, stage="2_current")
    await h.settle()
    assert h.doc.story(ours).claimed_by == h.engine.me
    assert not h.doc.story(theirs).claimed_by, "the better-ranked node gets the first chance"


@pytest.mark.parametrize("spread", [1.0, 7.5])
async def test_a_story_the_better_ranked_node_does_not_take_is_claimed_after_the_spread_delay(make_engine, spread):
    h = make_engine(max_concurrent=4, spread_delay_seconds=spread)
    await h.engine.start()
    peer = Peer(h, "other")
    peer.beat(capacity=4)
    theirs = story_ranked_first_by("other", {h.engine.me: 4, "other": 4}, "theirs")
    h.doc.add_story(theirs, stage="2_current")
    before = h.mono()
    await h.settle()  # the re-check timer (fake sleep) moves the clock by the spread delay
    assert h.doc.story(theirs).claimed_by == h.engine.me
    assert h.mono() - before >= spread


async def _never(seconds: float) -> None:
    await asyncio.Event().wait()
