"""The daily spend guard against an in-memory API: what runs cost is recorded, claiming
stops at the day's budget (counting what runs in flight may still spend), and a restart
rebuilds the day's spend from the finished StoryJobs."""

from __future__ import annotations

import json
import time

import pytest
from tests.helpers.fakekube import FakeKube

from huskies_agent.contract import ExitCode
from huskies_agent.k8s import objects
from huskies_agent.pipeline.document import PipelineDoc

ME = "node-me"


def result(cost, turns=4):
    return json.dumps({"commit": "abc", "pushed": True, "cost_usd": cost, "turns": turns})


async def add(h, *ids, stage="2_current"):
    for sid in ids:
        h.doc.add_story(sid, stage=stage)
    await h.settle()


async def succeed(h, sid, message):
    name = h.engine.runs[sid].spec.name
    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=True, exit_code=int(ExitCode.OK),
                                                              message=message))
    await h.settle()


def sample(h, name, **labels):
    return h.engine.ctx.metrics.registry.get_sample_value(name, labels)


async def test_cost_and_turns_are_recorded_by_stage(h):
    await add(h, "1_a", "2_b", stage="4_merge")
    await succeed(h, "1_a", result(1.25, turns=7))
    await succeed(h, "2_b", result(2, turns=3))
    assert sample(h, "huskies_agent_cost_usd_total", stage="4_merge") == 3.25
    assert sample(h, "huskies_agent_turns_count", stage="4_merge") == 2
    assert sample(h, "huskies_agent_turns_sum", stage="4_merge") == 10
    assert h.engine.ctx.node.ledger.spent_today(_utc(h)) == 3.25


@pytest.mark.parametrize("bad", ["lots", -1, True, None, [1], {"usd": 1}])
async def test_a_bad_cost_is_logged_and_counted_never_a_crash(h, bad):
    await add(h, "1_a", stage="4_merge")
    await succeed(h, "1_a", result(bad))
    assert h.doc.story("1_a").stage == "5_done"
    assert h.engine.ctx.node.ledger.spent_today(_utc(h)) == 0
    assert sample(h, "huskies_agent_bad_cost_results_total") == (0 if bad is None else 1)


async def test_claiming_stops_at_the_daily_budget_and_resumes_when_room_returns(make_engine):
    # 25 USD a day, 10 USD per run: 3 runs may start (0 + 10 + 20 < 25), not a 4th.
    h = make_engine(daily_budget_usd=25.0, max_concurrent=4)
    await h.engine.start()
    await add(h, "1_a", "2_b", "3_c", "4_d", stage="4_merge")
    assert len(h.engine.runs) == 3
    first = sorted(h.engine.runs)
    waiting = ({"1_a", "2_b", "3_c", "4_d"} - set(first)).pop()
    # What the 3 runs in flight may spend (30) is over the day's budget: claim nothing more.
    assert h.doc.nodes[ME].extra["paused"] == "daily-budget"
    events = [e for e in h.kube.events if e.reason == "DailyBudgetReached"]
    assert len(events) == 1 and "$0.00 of $25 spent today (+$30.00 in flight)" in events[0].message
    # One run spent 8: 8 + 2 runs x 10 in flight is not under 25: still nothing.
    await succeed(h, first[0], result(8))
    assert waiting not in h.engine.runs
    presence = h.doc.nodes[ME].extra
    assert presence["paused"] == "daily-budget"
    assert "daily budget reached: $8.00 of $25 spent today (+$20.00 in flight)" in presence["budget"]
    assert h.doc.nodes[ME].capacity == 0
    assert sample(h, "huskies_agent_claiming_paused", reason="daily-budget") == 1
    # Another look while still over: no second Event.
    await h.engine.resync()
    await h.settle()
    assert len([e for e in h.kube.events if e.reason == "DailyBudgetReached"]) == 1
    # The next run costs 1: 9 + 10 in flight < 25, so the waiting story is claimed (and with
    # it in flight the budget is reached again: a second Event for the second change).
    await succeed(h, first[1], result(1))
    assert waiting in h.engine.runs
    assert len([e for e in h.kube.events if e.reason == "DailyBudgetReached"]) == 2
    # Both finish cheaply: 9.5 spent, nothing in flight: claiming is open and presence says so.
    await succeed(h, first[2], result(0.25))
    await succeed(h, waiting, result(0.25))
    assert not h.engine.runs
    assert "paused" not in h.doc.nodes[ME].extra and "budget" not in h.doc.nodes[ME].extra
    assert sample(h, "huskies_agent_claiming_paused", reason="daily-budget") == 0


async def test_without_a_daily_budget_nothing_is_held(make_engine):
    h = make_engine(daily_budget_usd=0.0, max_concurrent=2)
    await h.engine.start()
    await add(h, "1_a", "2_b", stage="4_merge")
    await succeed(h, "1_a", result(1e6))
    await add(h, "3_c", stage="4_merge")
    assert set(h.engine.runs) == {"2_b", "3_c"}
    assert "budget" not in h.doc.nodes[ME].extra


async def test_adoption_rebuilds_the_days_spend_from_finished_storyjobs(make_engine):
    doc, kube = PipelineDoc(), FakeKube()
    h = make_engine(doc=doc, kube=kube, daily_budget_usd=30.0, max_concurrent=4)
    settings = h.engine.ctx.settings
    today = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.wall()))
    yesterday = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.wall() - 86400))
    for i, (cost, finished, node) in enumerate([(12.5, today, ME), (7.5, today, ME), (100.0, yesterday, ME),
                                                ("bad", today, ME), (50.0, today, "other")]):
        sid = f"{i}_done"
        doc.add_story(sid, stage="5_done")
        spec = objects.RunSpec(sid, "4_merge", node, 1)
        kube.put_storyjob(objects.build_storyjob(settings, spec), status={
            "phase": "Succeeded", "action": "advance", "recorded": True, "finishedAt": finished,
            "result": {"cost_usd": cost}})
    await h.engine.start()
    await h.settle()
    assert h.engine.ctx.node.ledger.spent_today(_utc(h)) == 20.0
    # 20 spent: one run (20 + 0 < 30) may start, a second (20 + 10) may not.
    await add(h, "a", "b", stage="4_merge")
    assert len(h.engine.runs) == 1
    # The adoption is not a new spend: the cost counter counts only runs this process saw end.
    assert sample(h, "huskies_agent_cost_usd_total", stage="4_merge") is None
    # Today's finished StoryJobs are kept past finished_ttl_seconds while a daily budget is set.
    h.wall.advance(settings.finished_ttl_seconds + 1)
    await h.engine.resync()
    names = {sj["spec"]["storyId"] for sj in kube.storyjobs.values()}
    assert {"0_done", "1_done"} <= names and "2_done" not in names


def _utc(h):
    from huskies_agent.engine.holds import utc

    return utc(h.wall())
