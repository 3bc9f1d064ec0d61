from huskies_agent import claims
from huskies_agent.claims import Verdict
from huskies_agent.pipeline.model import Claim, NodePresence, Story

NOW = 10_000.0
TIMEOUT = 600.0


def story(sid="1_a", stage="2_current", node="", epoch=0, at=0.0, **kw):
    claim = Claim(node, epoch, at) if (node or epoch) else None
    return Story(story_id=sid, stage=stage, claim=claim, **kw)


def alive(node, seen=NOW - 5):
    return {node: NodePresence(node_id=node, last_seen=seen, alive=True)}


def decide(s, nodes=None, stories=None, me="me"):
    return claims.decide(s, me=me, stories=stories or {s.story_id: s}, nodes=nodes or {}, now=NOW,
                         claim_timeout=TIMEOUT)


def test_unclaimed_active_story_is_claimed():
    for stage in ("2_current", "3_qa", "4_merge"):
        assert decide(story(stage=stage)).verdict is Verdict.CLAIM


def test_inactive_stages_are_skipped():
    for stage in ("1_backlog", "5_done", "6_archived"):
        assert decide(story(stage=stage)).verdict is Verdict.SKIP


def test_blocked_is_skipped():
    assert decide(story(blocked=True)).verdict is Verdict.SKIP


def test_our_claim_is_ours():
    assert decide(story(node="me", epoch=1)).verdict is Verdict.OURS


def test_live_node_claim_stands_however_old():
    # The original takes over claims older than 600 s even from live nodes; we do not.
    old = story(node="other", epoch=3, at=NOW - 10 * TIMEOUT)
    d = decide(old, nodes=alive("other"))
    assert d.verdict is Verdict.SKIP and "live node" in d.reason


def test_dead_node_claim_is_taken_over():
    s = story(node="other", epoch=3, at=NOW - 1)
    assert decide(s, nodes=alive("other", seen=NOW - TIMEOUT - 1)).verdict is Verdict.TAKE_OVER
    assert decide(s, nodes={}).verdict is Verdict.TAKE_OVER  # unknown node counts as dead
    dead_flag = {"other": NodePresence(node_id="other", last_seen=NOW, alive=False)}
    assert decide(s, nodes=dead_flag).verdict is Verdict.TAKE_OVER


def test_unmet_dependencies_hold_back():
    dep = story("1_dep", stage="2_current")
    s = story("2_x", depends_on=("1_dep", "9_gone"))
    stories = {dep.story_id: dep, s.story_id: s}
    assert decide(s, stories=stories).verdict is Verdict.SKIP
    done = story("1_dep", stage="5_done")
    assert decide(s, stories={**stories, "1_dep": done}).verdict is Verdict.CLAIM


def test_hostile_ids_are_skipped():
    for sid in ("../../x", "$(rm -rf /)", "a" * 300, "", "x y", "a..b", "-lead"):
        assert decide(story(sid)).verdict is Verdict.SKIP, sid
    assert decide(story("478_ünïcode-story")).verdict is Verdict.CLAIM


def test_choose_claims_respects_capacity_priority_and_cooldown():
    ss = [story("5_a"), story("3_b", stage="4_merge"), story("1_c", stage="3_qa"), story("2_d")]
    by_id = {s.story_id: s for s in ss}
    picked = claims.choose_claims(ss, me="me", stories=by_id, nodes={}, now=NOW, claim_timeout=TIMEOUT,
                                  busy=1, max_concurrent=3)
    assert [s.story_id for s in picked] == ["3_b", "1_c"]
    picked = claims.choose_claims(ss, me="me", stories=by_id, nodes={}, now=NOW, claim_timeout=TIMEOUT,
                                  busy=0, max_concurrent=10, cooling={"3_b"})
    assert [s.story_id for s in picked] == ["1_c", "2_d", "5_a"]
    assert claims.choose_claims(ss, me="me", stories=by_id, nodes={}, now=NOW, claim_timeout=TIMEOUT,
                                busy=3, max_concurrent=3) == []


def test_dead_claims_lists_only_dead_holders_in_active_stages():
    ss = [story("1", node="dead", epoch=1), story("2", node="live", epoch=1), story("3", node="me", epoch=1),
          story("4", stage="5_done", node="dead", epoch=1)]
    out = claims.dead_claims(ss, me="me", nodes=alive("live"), now=NOW, claim_timeout=TIMEOUT)
    assert [s.story_id for s in out] == ["1"]


def test_ownership():
    mine = story(node="me", epoch=2)
    assert claims.check_ownership(mine, me="me", epoch=2, stage="2_current").keep
    assert not claims.check_ownership(mine, me="me", epoch=1, stage="2_current").keep
    assert "lost to other" in claims.check_ownership(story(node="other", epoch=3), me="me", epoch=2,
                                                       stage="2_current").reason
    assert not claims.check_ownership(None, me="me", epoch=2, stage="2_current").keep
    assert not claims.check_ownership(story(stage="6_archived", node="me", epoch=2), me="me", epoch=2,
                                      stage="2_current").keep
