"""Issue 10's engine fixes: gated writes (I4), recorded outcomes, names and 409s, deadline kills."""

from __future__ import annotations

import json

from tests.helpers.docpeer import Peer
from tests.helpers.fakekube import FakeKube

from huskies_agent.k8s import objects
from huskies_agent.pipeline.document import PipelineDoc

ME = "node-me"
OK = json.dumps({"commit": "abc", "pushed": True})


async def started(h, sid="1_a", stage="2_current"):
    h.doc.add_story(sid, stage=stage)
    await h.settle()
    return h.job_name(sid)


# ---------------------------------------------------------------------- I4: gated writes

async def test_no_claims_while_cut_off_and_claims_once_the_link_is_back(h):
    h.sync.set_link(False)
    h.doc.add_story("1_a", stage="2_current")
    await h.settle()
    assert not h.doc.story("1_a").claimed_by and not h.kube.jobs
    h.sync.set_link(True)
    await h.settle()
    assert h.doc.story("1_a").claimed_by == ME and len(h.kube.jobs) == 1


async def test_an_outcome_reached_while_cut_off_is_written_when_the_link_is_back(h):
    name = await started(h)
    h.sync.set_link(False)
    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=True, exit_code=0, message=OK))
    await h.settle()
    status = h.kube.storyjobs[name]["status"]
    assert status["phase"] == "Succeeded" and status["recorded"] is False and status["action"] == "advance"
    assert h.doc.story("1_a").stage == "2_current", "no document write while cut off"
    await h.engine.resync()
    await h.settle()
    assert name in h.kube.storyjobs, "an unrecorded outcome is not cleaned up"
    h.sync.set_link(True)
    await h.settle()
    assert h.doc.story("1_a").stage == "3_qa"
    assert h.kube.storyjobs[name]["status"]["recorded"] is True
    assert h.kube.storyjobs[name]["status"]["reason"] == "advanced to 3_qa"


async def test_an_unconfirmed_outcome_is_confirmed_again_and_recorded_only_then(h):
    name = await started(h)
    h.sync.refuse_confirm = True
    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=True, exit_code=0, message=OK))
    await h.settle()
    assert h.doc.story("1_a").stage == "3_qa"  # written once, locally
    assert h.kube.storyjobs[name]["status"]["recorded"] is False
    tries = h.sync.confirms
    await h.settle()
    assert h.sync.confirms > tries, "confirmation is retried"
    assert "1_a" not in h.engine.runs, "the next stage does not start before the outcome is recorded"
    h.sync.refuse_confirm = False
    await h.settle()
    assert h.kube.storyjobs[name]["status"]["recorded"] is True
    assert h.engine.runs["1_a"].spec.stage == "3_qa"


async def test_an_unconfirmed_claim_is_kept_and_confirmed_again_never_released(h):
    h.sync.refuse_confirm = True
    h.doc.add_story("1_a", stage="2_current")
    await h.settle()
    story = h.doc.story("1_a")
    assert story.claimed_by == ME and story.epoch == 1
    assert not h.kube.jobs, "no Job before the claim is confirmed"
    tries = h.sync.confirms
    await h.settle()
    assert h.sync.confirms > tries
    assert h.doc.story("1_a").epoch == 1, "no release-and-reclaim loop"
    h.sync.refuse_confirm = False
    await h.settle()
    assert len(h.kube.jobs) == 1 and h.engine.runs["1_a"].spec.epoch == 1


async def test_the_synced_gauge_follows_the_link(h):
    gauge = h.engine.ctx.metrics.synced
    assert gauge._value.get() == 1
    h.sync.set_link(False)
    assert gauge._value.get() == 0
    h.sync.set_link(True)
    assert gauge._value.get() == 1


# ---------------------------------------------------------------------- finding 6: never run twice

def plant(kube, settings, spec, status, *, job=False):
    sj = kube.put_storyjob(objects.build_storyjob(settings, spec), status=status)
    if job:
        kube.put_job(objects.build_job(settings, spec, sj["metadata"]["uid"]))
    return sj


async def test_adoption_records_an_outcome_the_document_never_confirmed(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube)
    doc.add_story("1_a", stage="2_current")
    claim = doc.claim("1_a", ME, h.wall())
    spec = objects.RunSpec("1_a", "2_current", ME, claim.epoch)
    # The Job finished and was recorded Succeeded, but the process died before the
    # document write reached the rendezvous; the Job itself is long gone.
    plant(kube, h.engine.ctx.settings, spec, {"phase": "Succeeded", "action": "advance", "recorded": False})
    await h.engine.start()
    await h.settle()
    assert doc.story("1_a").stage == "3_qa"
    assert kube.storyjobs[spec.name]["status"]["recorded"] is True
    assert not any(n == spec.name for n in kube.jobs), "the finished claim is not run again"


async def test_a_job_recorded_as_created_is_never_created_again(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube)
    doc.add_story("1_a", stage="2_current")
    claim = doc.claim("1_a", ME, h.wall())
    spec = objects.RunSpec("1_a", "2_current", ME, claim.epoch)
    plant(kube, h.engine.ctx.settings, spec, {"phase": "Running", "jobCreated": True})
    await h.engine.start()
    await h.settle()
    assert spec.name not in kube.jobs and ("create_job", spec.name) not in kube.calls
    assert kube.phase(spec.name) == "Cancelled"
    assert not doc.story("1_a").claimed_by


async def test_resuming_a_claim_whose_run_already_ended_applies_its_outcome(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube)
    await h.engine.start()
    doc.add_story("1_a", stage="4_merge")
    claim = doc.claim("1_a", ME, h.wall())
    spec = objects.RunSpec("1_a", "4_merge", ME, claim.epoch)
    plant(kube, h.engine.ctx.settings, spec, {"phase": "Failed", "action": "count_failure", "recorded": False,
                                              "reason": "exit code 16: boom"})
    h.engine.reconcile(["1_a"])
    await h.settle()
    story = doc.story("1_a")
    assert story.retry_count == 1 and "boom" in story.last_error
    assert ("create_job", spec.name) not in kube.calls


# ---------------------------------------------------------------------- findings 3 and 5: names and 409s

async def test_a_storyjob_of_another_run_under_our_name_is_not_adopted(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube)
    await h.engine.start()
    doc.add_story("1_a", stage="3_qa")
    spec = objects.RunSpec("1_a", "3_qa", ME, 1)
    # Another run's StoryJob (here: the coder stage at the same epoch) under this run's name.
    foreign = objects.build_storyjob(h.engine.ctx.settings, objects.RunSpec("1_a", "2_current", ME, 1))
    foreign["metadata"]["name"] = spec.name
    kube.put_storyjob(foreign, status={"phase": "Succeeded"})
    await h.settle()
    story = doc.story("1_a")
    assert story.stage == "3_qa", "a finished StoryJob of another stage is not taken as this stage's result"
    assert not story.claimed_by
    assert kube.storyjobs[spec.name]["spec"]["stage"] == "2_current" and not kube.jobs


async def test_each_stage_gets_its_own_storyjob(h):
    name = await started(h, stage="2_current")
    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=True, exit_code=0, message=OK))
    await h.settle()
    qa = h.engine.runs["1_a"].spec
    assert qa.stage == "3_qa" and qa.name != name and qa.name in h.kube.jobs


async def test_two_installs_in_one_namespace_keep_to_their_own_objects(make_engine):
    kube, doc = FakeKube(), PipelineDoc()
    a = make_engine(doc=doc, kube=kube)
    await a.engine.start()
    doc.add_story("12_x", stage="2_current")
    await a.settle()
    other_doc = PipelineDoc()
    other_doc.add_story("12_x", stage="2_current")
    b = make_engine(doc=other_doc, kube=kube)
    b.engine.ctx.me = "node-other"
    await b.engine.start()
    await b.settle()
    assert len(kube.jobs) == 2 and len(kube.storyjobs) == 2
    assert a.engine.runs["12_x"].spec.name != b.engine.runs["12_x"].spec.name
    # B's adoption did not touch A's run, and A's resync does not judge B's Job.
    await a.engine.resync()
    await a.settle()
    assert {sj["status"]["phase"] for sj in kube.storyjobs.values()} == {"Pending"}


# ---------------------------------------------------------------------- findings 7 and disruption

async def test_deadline_kills_are_counted_and_block_at_max_retries(make_engine):
    h = make_engine(max_retries=2)
    await h.engine.start()
    await started(h)
    for attempt in (1, 2):
        name = h.engine.runs["1_a"].spec.name
        job = h.kube.finish_job(name, succeeded=False, reason="DeadlineExceeded", exit_code=19,
                                message=json.dumps({"error": "terminated"}))
        await h.engine.on_job_event("MODIFIED", job)
        await h.settle()
        assert h.doc.story("1_a").retry_count == attempt
        assert "deadline exceeded" in h.kube.storyjobs[name]["status"]["reason"]
    assert h.doc.story("1_a").blocked
    assert [e.reason for e in h.kube.events if e.reason != "Claimed"] == ["DeadlineExceeded", "Blocked"]


async def test_eviction_ends_in_released_not_failed(h):
    name = await started(h)
    pod = h.kube.add_pod(name, status={"phase": "Failed", "reason": "Evicted"})
    await h.engine.on_pod_event("MODIFIED", pod)
    await h.settle()
    assert h.kube.phase(name) == "Released"
    assert h.doc.story("1_a").retry_count == 0


# ---------------------------------------------------------------------- finding 2: a late finisher

async def test_a_cut_off_nodes_late_completion_does_not_undo_a_takeover(h):
    name = await started(h)
    epoch = h.engine.runs["1_a"].spec.epoch
    h.sync.set_link(False)
    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=True, exit_code=0, message=OK))
    await h.settle()
    # Meanwhile another node took the story over and finished the coder stage itself;
    # the reconnect brings its writes in before the link counts as synced.
    peer = Peer(h, "other")
    peer.doc.claim("1_a", "other", 0.0)
    assert peer.doc.complete("1_a", "other", epoch + 1, "2_current", 0.0) == "3_qa"
    peer.push()
    h.sync.set_link(True)
    await h.settle()
    story = h.doc.story("1_a")
    assert story.stage == "3_qa" and story.stage_epoch == epoch + 1, "advanced once, by the winner"
    status = h.kube.storyjobs[name]["status"]
    assert status["recorded"] is True and status["reason"] == "claim no longer ours"


# ---------------------------------------------------------------------- finding 3: the run's own stage

async def test_a_story_moved_back_by_hand_while_its_outcome_waits_is_not_advanced(h):
    name = await started(h, stage="3_qa")
    h.sync.set_link(False)
    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=True, exit_code=0, message=OK))
    await h.settle()
    h.doc.move("1_a", "2_current", writer="cli-human")  # a person sends it back to the coder
    h.sync.set_link(True)
    await h.settle()
    assert h.doc.story("1_a").stage == "2_current", "the QA run's success does not skip the new coder stage"
    assert h.kube.storyjobs[name]["status"]["reason"] == "claim no longer ours"


async def test_a_story_moved_by_hand_stops_its_run(h):
    name = await started(h, stage="3_qa")
    h.doc.move("1_a", "4_merge", writer="cli-human")
    await h.settle()
    assert name not in h.kube.jobs and h.kube.phase(name) == "Lost"
    # The move fenced the claim: the merge stage is claimed afresh, above the move's epoch.
    run = h.engine.runs["1_a"]
    assert run.spec.stage == "4_merge" and run.spec.epoch > h.doc.story("1_a").stage_epoch


# ---------------------------------------------------------------------- nobody releases others' claims

async def test_a_dead_nodes_claim_is_not_released_by_a_node_without_room(make_engine):
    h = make_engine(max_concurrent=1, claim_timeout_seconds=60)
    await h.engine.start()
    name = await started(h, "1_mine")
    await h.engine.on_pod_event("ADDED", h.kube.add_pod(name, status={"phase": "Running"}))
    peer = Peer(h, "other")
    h.doc.add_story("2_theirs", stage="2_current")
    peer.beat()
    peer.claim("2_theirs")
    h.mono.advance(3600)
    await h.engine.resync()
    await h.settle()
    story = h.doc.story("2_theirs")
    assert story.claimed_by == "other" and story.claim.epoch == 1, "left for a node with room to take over"


async def test_the_link_counts_as_up_only_once_a_new_connection_has_synced(h):
    import asyncio

    follow = asyncio.create_task(h.engine._link_loop())
    try:
        await h.settle()
        h.sync.set_link(False)
        h.doc.add_story("1_a", stage="2_current")
        await h.settle()
        h.sync.set_link(True, synced=False)  # connected, the initial sync still running
        await h.settle()
        assert not h.engine.ctx.link.is_set() and not h.doc.story("1_a").claimed_by
        assert not h.engine.ctx.liveness.linked
        h.sync.finish_sync()
        await h.settle()
        assert h.engine.ctx.link.is_set() and h.engine.ctx.liveness.linked
        assert h.doc.story("1_a").claimed_by == h.engine.me, "stories are looked at again once synced"
    finally:
        follow.cancel()
