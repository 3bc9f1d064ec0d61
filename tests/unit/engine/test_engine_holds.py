"""Node-level holds against an in-memory API: a refused key, an unavailable model API,
the agent's budget, and the rule that keeps a story from using them forever."""

from __future__ import annotations

import asyncio
import json

from huskies_agent.contract import ExitCode
from huskies_agent.engine.holds import UNAVAILABLE_MAX_SECONDS, UNAVAILABLE_MIN_SECONDS

ME = "node-me"
RESULT_OK = json.dumps({"commit": "abc", "pushed": True, "cost_usd": 0.5, "turns": 3})


async def _never(seconds: float) -> None:
    await asyncio.Event().wait()


async def add(h, *ids, stage="2_current"):
    for sid in ids:
        h.doc.add_story(sid, stage=stage)
    await h.settle()


async def finish(h, sid, code, message=""):
    name = h.engine.runs[sid].spec.name
    ok = code == ExitCode.OK
    await h.engine.on_job_event("MODIFIED", h.kube.finish_job(name, succeeded=ok, exit_code=int(code),
                                                              message=message or json.dumps({"error": "x"})))
    await h.settle()
    return name


def presence(h):
    return h.doc.nodes[ME].extra


def gauge(h, name, **labels):
    return h.engine.ctx.metrics.registry.get_sample_value(name, labels)


async def test_a_refused_key_releases_uncounted_and_pauses_this_node(make_engine):
    h = make_engine(agent_auth_pause_seconds=900)
    await h.engine.start()
    await add(h, "1_a")
    h.engine.ctx.sleep = _never  # hold the clock: the pause must not pass by itself
    name = await finish(h, "1_a", ExitCode.AGENT_AUTH, json.dumps({"error": "401 invalid x-api-key"}))
    story = h.doc.story("1_a")
    assert not story.claimed_by and story.retry_count == 0 and not story.blocked
    sj = h.kube.storyjobs[name]["status"]
    assert sj["phase"] == "Released" and "model API refused the key" in sj["reason"]
    assert "AgentAuthFailed" in [e.reason for e in h.kube.events]
    assert presence(h)["paused"] == "agent-auth" and h.doc.nodes[ME].capacity == 0
    # Nothing is claimed while paused, not even new work.
    await add(h, "2_b")
    h.engine.reconcile(["1_a", "2_b"])
    await h.settle()
    assert not h.engine.runs and not h.doc.story("2_b").claimed_by
    assert gauge(h, "huskies_agent_claiming_paused", reason="agent-auth") == 1
    # After the pause the node claims again and presence says so.
    h.mono.advance(901)
    h.engine.reconcile(["1_a", "2_b"])
    await h.settle()
    assert set(h.engine.runs) == {"1_a", "2_b"}
    h.engine.write_presence()
    assert "paused" not in presence(h)
    assert gauge(h, "huskies_agent_claiming_paused", reason="agent-auth") == 0


async def test_an_unavailable_api_backs_the_node_off_until_the_next_success(make_engine):
    h = make_engine()
    await h.engine.start()
    await add(h, "1_a", "2_b")
    h.engine.ctx.sleep = _never
    await finish(h, "1_a", ExitCode.AGENT_UNAVAILABLE)
    assert h.doc.story("1_a").retry_count == 0 and not h.doc.story("1_a").claimed_by
    assert "AgentUnavailable" in [e.reason for e in h.kube.events]
    held = h.engine.ctx.node.paused(h.mono())
    assert held is not None and held[0].value == "agent-unavailable"
    assert UNAVAILABLE_MIN_SECONDS <= held[1] <= UNAVAILABLE_MAX_SECONDS
    assert presence(h)["paused"] == "agent-unavailable"
    h.engine.reconcile(["1_a"])
    await h.settle()
    assert "1_a" not in h.engine.runs
    # The run in flight gets through: the backoff is reset and claiming resumes at once.
    await finish(h, "2_b", ExitCode.OK, RESULT_OK)
    assert h.engine.ctx.node.backoff.failures == 0 and h.engine.ctx.node.paused(h.mono()) is None
    h.engine.reconcile(["1_a"])
    await h.settle()
    assert "1_a" in h.engine.runs


async def test_the_agents_budget_is_a_counted_failure(make_engine):
    h = make_engine(max_retries=3)
    await h.engine.start()
    await add(h, "1_a")
    name = await finish(h, "1_a", ExitCode.AGENT_BUDGET, json.dumps({"error": "spent $10.02", "cost_usd": 10.02}))
    story = h.doc.story("1_a")
    assert story.retry_count == 1
    assert "budget reached" in h.kube.storyjobs[name]["status"]["reason"]
    assert "BudgetReached" in [e.reason for e in h.kube.events]
    assert h.engine.ctx.node.paused(h.mono()) is None
    assert gauge(h, "huskies_agent_cost_usd_total", stage="2_current") == 10.02


async def test_a_story_cannot_release_itself_uncounted_forever(make_engine):
    # The exit code comes from the story's own pod: after max_retries uncounted endings in a
    # row on this node, the next is counted (and holds nothing), so it ends blocked.
    h = make_engine(max_retries=2)
    await h.engine.start()
    await add(h, "1_a")
    reasons = []
    for _ in range(4):
        name = await finish(h, "1_a", ExitCode.AGENT_AUTH)
        reasons.append(h.kube.storyjobs[name]["status"]["reason"])
        h.mono.advance(901)  # past the node's pause (the fake sleep may have passed it already)
        h.engine.reconcile(["1_a"])
        await h.settle()
    story = h.doc.story("1_a")
    assert ["counted: the story ended uncounted" in r for r in reasons] == [False, False, True, True]
    assert story.blocked and story.retry_count == 2
    assert h.engine.ctx.node.paused(h.mono()) is None


async def test_a_success_ends_the_streak(make_engine):
    h = make_engine(max_retries=1)
    await h.engine.start()
    await add(h, "1_a", stage="4_merge")
    await finish(h, "1_a", ExitCode.AGENT_UNAVAILABLE)
    h.mono.advance(UNAVAILABLE_MAX_SECONDS + 1)
    h.engine.reconcile(["1_a"])
    await h.settle()
    assert h.engine.ctx.node.uncounted == {"1_a": 1}
    await finish(h, "1_a", ExitCode.OK, RESULT_OK)
    assert h.engine.ctx.node.uncounted == {}


async def test_the_streak_of_a_story_that_is_gone_is_forgotten(make_engine):
    h = make_engine()
    await h.engine.start()
    await add(h, "1_a")
    await finish(h, "1_a", ExitCode.AGENT_UNAVAILABLE)
    assert h.engine.ctx.node.uncounted == {"1_a": 1}
    h.doc.remove_story("1_a")
    await h.engine.resync()
    assert h.engine.ctx.node.uncounted == {}


def test_node_state_holds_as_a_table():
    from huskies_agent.contract import NodeHold
    from huskies_agent.engine.holds import NodeState, Pause

    state = NodeState(auth_pause_seconds=100)
    state.backoff.rand = lambda: 1.0  # the top of each jittered range: 30, 60, 120...
    assert state.hold(NodeHold.NONE, 0) == 0 and state.paused(0) is None
    assert state.hold(NodeHold.BACKOFF, 0) == 30
    assert state.hold(NodeHold.BACKOFF, 0) == 60
    assert state.paused(10) == (Pause.AGENT_UNAVAILABLE, 50)
    assert state.hold(NodeHold.CREDENTIALS, 0) == 100
    assert state.paused(10) == (Pause.AGENT_AUTH, 90)  # the longest hold is the one in force
    assert state.paused(70) == (Pause.AGENT_AUTH, 30)
    assert state.paused(100) is None
    state.hold(NodeHold.BACKOFF, 0)
    state.succeeded()
    assert state.paused(0) is None and state.backoff.failures == 0
    assert state.hold(NodeHold.BACKOFF, 0) == 30
