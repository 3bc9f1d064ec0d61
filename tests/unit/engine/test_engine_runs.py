"""The engine's decisions against an in-memory API: claims, capacity, endings."""

from __future__ import annotations

import json

from huskies_agent.pipeline.model import NodePresence

RESULT_OK = json.dumps({"commit": "abc", "pushed": True})


def alive(h, node):
    h.doc.put_presence(NodePresence(node_id=node, last_seen=h.wall() + 3600, alive=True))


async def add(h, *ids, stage="2_current"):
    for sid in ids:
        h.doc.add_story(sid, stage=stage)
    await h.settle()


async def test_claimable_story_gets_a_storyjob_and_a_job(h):
    await add(h, "1_a")
    story = h.doc.story("1_a")
    assert story.claimed_by == h.engine.me
    sj = h.storyjob("1_a")
    assert sj["spec"]["stage"] == "2_current" and sj["spec"]["epoch"] == story.epoch
    assert list(h.kube.jobs) == [sj["metadata"]["name"]]
    job = h.kube.jobs[sj["metadata"]["name"]]
    assert job["metadata"]["ownerReferences"][0]["uid"] == sj["metadata"]["uid"]
    assert h.kube.phase(sj["metadata"]["name"]) == "Pending"
    assert [e.reason for e in h.kube.events] == ["Claimed"]


async def test_capacity_limits_claims_and_freed_room_is_used(make_engine):
    h = make_engine(max_concurrent=2)
    await h.engine.start()
    await add(h, "1_a", "2_b", "3_c", stage="4_merge")
    assert sorted(h.engine.runs) == ["1_a", "2_b"]
    assert not h.doc.story("3_c").claimed_by
    name = h.job_name("1_a")
    job = h.kube.finish_job(name, succeeded=True, exit_code=0, message=RESULT_OK)
    await h.engine.on_job_event("MODIFIED", job)
    await h.settle()
    assert h.doc.story("1_a").stage == "5_done"
    assert sorted(h.engine.runs) == ["2_b", "3_c"]


async def test_finished_job_advances_the_story(h):
    await add(h, "1_a")
    name = h.job_name("1_a")
    await h.engine.on_job_event("MODIFIED", h.kube.set_job_active(name))
    assert h.kube.phase(name) == "Running"
    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=True, exit_code=0, message=RESULT_OK))
    await h.settle()
    story = h.doc.story("1_a")
    assert story.stage == "3_qa"
    sj = h.kube.storyjobs[name]
    assert sj["status"]["phase"] == "Succeeded" and sj["status"]["commit"] == "abc"
    # The next stage is claimed and gets its own run.
    assert h.engine.runs["1_a"].spec.stage == "3_qa"


async def test_failed_job_is_counted_and_blocks_at_max_retries(make_engine):
    h = make_engine(max_retries=2)
    await h.engine.start()
    await add(h, "1_a")
    failure = json.dumps({"error": "agent gave up"})
    for attempt in (1, 2):
        name = h.engine.runs["1_a"].spec.name
        await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=False, exit_code=16,
                                                                  message=failure))
        await h.settle()
        story = h.doc.story("1_a")
        assert story.retry_count == attempt
        assert h.kube.phase(name) == "Failed"
        assert "exit code 16: agent gave up" in h.kube.storyjobs[name]["status"]["reason"]
    assert story.blocked and "agent gave up" in story.last_error
    assert "1_a" not in h.engine.runs
    assert h.kube.events[-1].reason == "Blocked"


async def test_lost_claim_deletes_the_job_at_once(h):
    await add(h, "1_a")
    name = h.job_name("1_a")
    h.kube.add_pod(name, status={"phase": "Running"})
    alive(h, "other")
    h.doc.claim("1_a", "other", h.wall())
    await h.settle()
    assert name not in h.kube.jobs and not h.kube.pods
    assert h.kube.phase(name) == "Lost"
    assert h.doc.story("1_a").claimed_by == "other"
    assert "1_a" not in h.engine.runs


async def test_story_removed_cancels_its_run(h):
    await add(h, "1_a")
    name = h.job_name("1_a")
    h.doc.remove_story("1_a")
    await h.settle()
    assert name not in h.kube.jobs and h.kube.phase(name) == "Cancelled"


async def test_deleted_job_gives_the_story_back_and_cools_down(h):
    await add(h, "1_a")
    name = h.job_name("1_a")
    job = h.kube.jobs.pop(name)
    await h.engine.on_job_event("DELETED", job)
    await h.settle()
    assert h.kube.phase(name) == "Cancelled"
    assert not h.doc.story("1_a").claimed_by
    # Cooling down: not claimed again until the cooldown passes on the monotonic clock.
    h.engine.reconcile(["1_a"])
    await h.settle()
    assert not h.doc.story("1_a").claimed_by
    h.mono.advance(31)
    h.engine.reconcile(["1_a"])
    await h.settle()
    assert h.doc.story("1_a").claimed_by == h.engine.me


async def test_failed_job_creation_releases_the_claim(h):
    h.kube.fail("create_job", 403)
    await add(h, "1_a")
    assert not h.doc.story("1_a").claimed_by
    sj = h.storyjob("1_a")
    assert sj["status"]["phase"] == "Failed" and "job not created" in sj["status"]["reason"]
    assert "1_a" not in h.engine.runs


async def test_a_failing_delete_is_retried_by_the_resync(h):
    await add(h, "1_a")
    name = h.job_name("1_a")
    h.kube.fail("delete_job", 500)
    alive(h, "other")
    h.doc.claim("1_a", "other", h.wall())
    await h.settle()
    assert name in h.kube.jobs  # the delete failed; the run stays to be stopped again
    await h.engine.resync()
    await h.settle()
    assert name not in h.kube.jobs and h.kube.phase(name) == "Lost"
