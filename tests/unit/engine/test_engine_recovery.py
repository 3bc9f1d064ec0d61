"""Adoption after a restart, and clean-up of finished StoryJobs."""

from __future__ import annotations

from tests.helpers.fakekube import FakeKube

from huskies_agent.k8s import objects
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.pipeline.model import NodePresence

ME = "node-me"


def leftovers(kube, settings, doc, sid, node, *, phase="Running", job=True):
    """A StoryJob (and its Job) left by an earlier process of ``node`` for ``sid``'s current claim."""
    story = doc.story(sid)
    spec = objects.RunSpec(sid, story.stage, node, story.epoch)
    sj = kube.put_storyjob(objects.build_storyjob(settings, spec), status={"phase": phase})
    if job:
        kube.put_job(objects.build_job(settings, spec, sj["metadata"]["uid"]))
    return spec


async def test_adoption_keeps_own_runs_and_deletes_stale_ones(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube)
    settings = h.engine.ctx.settings
    for sid in ("1_mine", "2_stale"):
        doc.add_story(sid, stage="2_current")
        doc.claim(sid, ME, h.wall())
    mine = leftovers(kube, settings, doc, "1_mine", ME)
    stale = leftovers(kube, settings, doc, "2_stale", ME)
    # While we were away a live node took 2_stale over.
    doc.put_presence(NodePresence(node_id="other", last_seen=h.wall() + 3600, alive=True))
    doc.claim("2_stale", "other", h.wall())
    await h.engine.start()
    await h.settle()
    assert set(h.engine.runs) == {"1_mine"}
    assert h.engine.runs["1_mine"].spec == mine
    assert mine.name in kube.jobs, "our own running Job is kept"
    assert len(kube.jobs) == 1, "no second Job for an adopted run"
    assert stale.name not in kube.jobs
    assert kube.phase(stale.name) == "Lost"


async def test_adoption_finishes_a_job_that_ended_while_we_were_away(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube)
    doc.add_story("1_a", stage="2_current")
    doc.claim("1_a", ME, h.wall())
    spec = leftovers(kube, h.engine.ctx.settings, doc, "1_a", ME)
    kube.finish_job(spec.name, succeeded=True, exit_code=0, message='{"commit": "c", "pushed": true}')
    await h.engine.start()
    await h.settle()
    assert doc.story("1_a").stage == "3_qa"
    assert kube.phase(spec.name) == "Succeeded"


async def test_adoption_creates_the_missing_job_of_an_own_claim(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube)
    doc.add_story("1_a", stage="2_current")
    doc.claim("1_a", ME, h.wall())
    spec = leftovers(kube, h.engine.ctx.settings, doc, "1_a", ME, phase="Pending", job=False)
    await h.engine.start()
    await h.settle()
    assert spec.name in kube.jobs and h.engine.runs["1_a"].spec == spec


async def test_other_nodes_storyjobs_are_left_alone(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube)
    doc.add_story("1_a", stage="2_current")
    doc.put_presence(NodePresence(node_id="other", last_seen=h.wall() + 3600, alive=True))
    doc.claim("1_a", "other", h.wall())
    spec = leftovers(kube, h.engine.ctx.settings, doc, "1_a", "other")
    await h.engine.start()
    await h.settle()
    assert spec.name in kube.jobs and kube.phase(spec.name) == "Running"
    assert not h.engine.runs


async def test_finished_storyjobs_are_deleted_after_their_ttl(h):
    h.doc.add_story("1_a", stage="4_merge")
    await h.settle()
    name = h.job_name("1_a")
    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=True, exit_code=0, message="{}"))
    await h.settle()
    await h.engine.resync()
    assert name in h.kube.storyjobs
    h.wall.advance(h.engine.ctx.settings.finished_ttl_seconds + 5)
    await h.engine.resync()
    assert name not in h.kube.storyjobs and name not in h.kube.jobs


async def test_a_run_named_by_an_earlier_version_is_handed_off_not_run_twice(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube)
    settings = h.engine.ctx.settings
    doc.add_story("1_a", stage="2_current")
    doc.claim("1_a", ME, h.wall())
    spec = objects.RunSpec("1_a", "2_current", ME, 1)
    legacy = "story-1-a-b8462741dd-e1"  # story-<slug>-<hash>-e<epoch>, without stage or node
    body = objects.build_storyjob(settings, spec)
    body["metadata"]["name"] = legacy
    sj = kube.put_storyjob(body, status={"phase": "Running"})
    job = objects.build_job(settings, spec, sj["metadata"]["uid"])
    job["metadata"]["name"] = legacy
    kube.put_job(job)
    await h.engine.start()
    await h.settle()
    assert legacy not in kube.jobs
    status = kube.storyjobs[legacy]["status"]
    assert status["phase"] == "Released" and status["recorded"] is True
    # Released, then claimed afresh under the current naming at a new epoch.
    run = h.engine.runs["1_a"]
    assert run.spec.epoch == 2 and run.spec.name in kube.jobs
