"""Table tests of the pure claiming policy (docs/claims.md: decide, Liveness, rank, choose_claims, ownership)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from huskies_agent import claims
from huskies_agent.claims import Liveness, Verdict
from huskies_agent.pipeline.model import Claim, Story

TIMEOUT = 600.0


def story(sid: str = "1_a", stage: str = "2_current", node: str = "", epoch: int = 0, **kw: object) -> Story:
    claim = Claim(node, epoch, 0.0, stage) if node else None
    return Story(story_id=sid, stage=stage, claim=claim, top_epoch=epoch, **kw)  # type: ignore[arg-type]


def dead_set(*nodes: str) -> claims.IsDead:
    return lambda node: node in nodes


def decide(s: Story, dead: tuple[str, ...] = (), stories: dict[str, Story] | None = None) -> claims.Decision:
    return claims.decide(s, me="me", stories=stories or {s.story_id: s}, is_dead=dead_set(*dead))


@pytest.mark.parametrize(("s", "dead", "verdict", "reason"), [
    (story(stage="2_current"), (), Verdict.CLAIM, ""),
    (story(stage="3_qa"), (), Verdict.CLAIM, ""),
    (story(stage="4_merge"), (), Verdict.CLAIM, ""),
    (story(stage="1_backlog"), (), Verdict.SKIP, "not worked on"),
    (story(stage="5_done"), (), Verdict.SKIP, "not worked on"),
    (story(stage="6_archived"), (), Verdict.SKIP, "not worked on"),
    (story(blocked=True), (), Verdict.SKIP, "blocked"),
    (story(node="me", epoch=1), (), Verdict.OURS, ""),
    (story(node="me", epoch=1, blocked=True), (), Verdict.OURS, ""),
    # A live holder's claim stands however old it is; only a dead holder's is taken over.
    (story(node="other", epoch=3), (), Verdict.SKIP, "live node other"),
    (story(node="other", epoch=3), ("other",), Verdict.TAKE_OVER, "holder other is dead"),
    (story(node="other", epoch=3, blocked=True), ("other",), Verdict.SKIP, "blocked"),
])
def test_decide(s: Story, dead: tuple[str, ...], verdict: Verdict, reason: str) -> None:
    d = decide(s, dead)
    assert d.verdict is verdict and reason in d.reason
    assert d.wants_claim == (verdict in (Verdict.CLAIM, Verdict.TAKE_OVER))


def test_unmet_dependencies_hold_back() -> None:
    dep = story("1_dep", stage="2_current")
    s = story("2_x", depends_on=("1_dep", "9_gone"))
    stories = {dep.story_id: dep, s.story_id: s}
    assert decide(s, stories=stories).verdict is Verdict.SKIP
    assert decide(s, stories={**stories, "1_dep": story("1_dep", stage="5_done")}).verdict is Verdict.CLAIM


@pytest.mark.parametrize("sid", ["../../x", "$(rm -rf /)", "a" * 300, "", "x y", "a..b", "-lead"])
def test_hostile_ids_are_skipped(sid: str) -> None:
    assert decide(story(sid)).verdict is Verdict.SKIP


def test_unicode_ids_are_fine() -> None:
    assert decide(story("478_ünïcode-story")).verdict is Verdict.CLAIM


# ---------------------------------------------------------------------------- Liveness
# Events: ("up", t) link synced, ("down", t) link dropped, ("heard", t) a remote presence
# change of node "b". The verdict asked is is_dead("b", at).
@pytest.mark.parametrize(("events", "at", "dead"), [
    ([], 10_000.0, False),  # never linked: cut off, nobody is dead
    ([("up", 0.0)], 599.0, False),  # synced for less than a timeout: nobody is dead yet
    ([("up", 0.0)], 600.0, True),  # never heard after a full timeout synced
    ([("up", 0.0), ("heard", 100.0)], 699.0, False),
    ([("up", 0.0), ("heard", 100.0)], 700.0, True),
    # Cut off: however long, nobody becomes dead (finding 1).
    ([("up", 0.0), ("heard", 100.0), ("down", 200.0)], 100_000.0, False),
    # After a reconnect nobody is dead until synced a full timeout, however stale before.
    ([("up", 0.0), ("heard", 100.0), ("down", 200.0), ("up", 5_000.0)], 5_599.0, False),
    ([("up", 0.0), ("heard", 100.0), ("down", 200.0), ("up", 5_000.0)], 5_600.0, True),
    ([("up", 0.0), ("down", 200.0), ("up", 5_000.0), ("heard", 5_500.0)], 6_099.0, False),
    # A repeated link_up while up does not restart the grace period.
    ([("up", 0.0), ("up", 500.0)], 600.0, True),
    # A late (out-of-order) heard never moves the last time heard backwards.
    ([("up", 0.0), ("heard", 400.0), ("heard", 100.0)], 999.0, False),
])
def test_liveness(events: list[tuple[str, float]], at: float, dead: bool) -> None:
    live = Liveness(TIMEOUT)
    for kind, t in events:
        if kind == "up":
            live.link_up(t)
        elif kind == "down":
            live.link_down()
        else:
            live.heard("b", t)
    assert live.is_dead("b", at) is dead
    links = [kind for kind, _ in events if kind in ("up", "down")]
    assert live.linked is (bool(links) and links[-1] == "up")


def test_liveness_is_per_node() -> None:
    live = Liveness(TIMEOUT)
    live.link_up(0.0)
    live.heard("a", 500.0)
    assert live.is_dead("b", 700.0) and not live.is_dead("a", 700.0)
    assert live.silent_for("a", 700.0) == 200.0
    live.link_down()
    assert live.silent_for("a", 700.0) is None


# ---------------------------------------------------------------------------- rank
def test_rank_is_deterministic_and_ignores_nodes_without_room() -> None:
    caps = {"a": 1, "b": 2, "c": 0, "d": 3}
    order = claims.rank("12_story", caps)
    assert sorted(order) == ["a", "b", "d"]
    assert claims.rank("12_story", dict(reversed(caps.items()))) == order
    assert claims.rank("12_story", {}) == []


def test_rank_of_a_node_does_not_depend_on_others_relative_order() -> None:
    # Removing a node that ranks below two others does not reorder them (the HRW property).
    for i in range(200):
        full = claims.rank(f"{i}_s", {"a": 1, "b": 1, "c": 1, "d": 1})
        without = claims.rank(f"{i}_s", {n: 1 for n in "abcd" if n != full[-1]})
        assert without == full[:-1]


@pytest.mark.parametrize("weights", [{"a": 1, "b": 3}, {"a": 2, "b": 2, "c": 4}])
def test_rank_first_choice_follows_weights(weights: dict[str, int]) -> None:
    firsts = Counter(claims.rank(f"{i}_story", weights)[0] for i in range(4000))
    total = sum(weights.values())
    for node, weight in weights.items():
        share = firsts[node] / 4000
        assert abs(share - weight / total) <= 0.2 * weight / total, (node, share)


# ---------------------------------------------------------------------------- choose_claims
def choose(ss: list[Story], *, busy: int = 0, max_concurrent: int = 10, cooling: frozenset[str] = frozenset(),
           capacities: dict[str, int] | None = None, dead: tuple[str, ...] = (),
           waited: float = 0.0, spread_delay: float = 0.0) -> claims.Choice:
    return claims.choose_claims(
        ss, me="me", stories={s.story_id: s for s in ss}, is_dead=dead_set(*dead), capacities=capacities or {},
        busy=busy, max_concurrent=max_concurrent, cooling=cooling, waited=lambda _sid: waited,
        spread_delay=spread_delay)


def test_choose_claims_respects_capacity_priority_and_cooldown() -> None:
    ss = [story("5_a"), story("3_b", stage="4_merge"), story("1_c", stage="3_qa"), story("2_d")]
    assert [s.story_id for s in choose(ss, busy=1, max_concurrent=3).now] == ["3_b", "1_c"]
    assert [s.story_id for s in choose(ss, cooling=frozenset({"3_b"})).now] == ["1_c", "2_d", "5_a"]
    assert choose(ss, busy=3, max_concurrent=3) == claims.Choice([], None)


def _ids_where_me_ranks(k: int, others: dict[str, int], count: int = 3) -> list[str]:
    found = []
    for i in itertools.count():
        sid = f"{i}_s"
        if claims.rank(sid, {**others, "me": 10}).index("me") == k:
            found.append(sid)
            if len(found) == count:
                return found
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("k", "waited", "claimed_now", "recheck_in"), [
    (0, 0.0, True, None),  # ranked first: claimed at once
    (1, 0.0, False, 5.0),  # second: waits one spread delay
    (1, 4.0, False, 1.0),
    (1, 5.0, True, None),
    (2, 5.0, False, 5.0),  # third: waits two
    (2, 10.0, True, None),
])
def test_spread_delay_by_rank(k: int, waited: float, claimed_now: bool, recheck_in: float | None) -> None:
    others = {"b": 10, "c": 10}
    ss = [story(sid) for sid in _ids_where_me_ranks(k, others)]
    choice = choose(ss, capacities=others, waited=waited, spread_delay=5.0)
    assert [s.story_id for s in choice.now] == ([s.story_id for s in ss] if claimed_now else [])
    assert choice.recheck_in == recheck_in


def test_dead_or_full_nodes_do_not_delay_others() -> None:
    ss = [story(sid) for sid in _ids_where_me_ranks(1, {"b": 10})]
    assert choose(ss, capacities={"b": 10}, spread_delay=5.0).now == []
    assert len(choose(ss, capacities={"b": 10}, dead=("b",), spread_delay=5.0).now) == 3
    assert len(choose(ss, capacities={"b": 0}, spread_delay=5.0).now) == 3


def test_takeover_of_a_dead_holder_is_chosen_and_live_holder_is_not() -> None:
    taken = story("7_t", node="other", epoch=2)
    assert choose([taken], dead=("other",)).now == [taken]
    assert choose([taken]).now == []


# ---------------------------------------------------------------------------- ownership
@pytest.mark.parametrize(("s", "epoch", "stage", "keep", "reason"), [
    (story(node="me", epoch=2), 2, "2_current", True, ""),
    (story(node="me", epoch=2), 1, "2_current", False, "epoch moved from 1 to 2"),
    (story(node="other", epoch=3), 2, "2_current", False, "lost to other"),
    (story(epoch=3), 2, "2_current", False, "lost to nobody"),
    (None, 2, "2_current", False, "removed"),
    (story(stage="6_archived", node="me", epoch=2), 2, "2_current", False, "moved to 6_archived"),
    (story(stage="3_qa", node="me", epoch=2), 2, "2_current", False, "moved from 2_current to 3_qa"),
])
def test_ownership(s: Story | None, epoch: int, stage: str, keep: bool, reason: str) -> None:
    own = claims.check_ownership(s, me="me", epoch=epoch, stage=stage)
    assert own.keep is keep and reason in own.reason


def test_nodes_freeing_a_slot_together_reach_for_different_stories_of_a_backlog() -> None:
    """A backlog of stories that all waited past every rank's delay: two nodes with one free slot each
    take the stories they rank first for, not the same lowest-numbered one (a race for one story)."""
    backlog = [story(f"{i}_s") for i in range(1, 21)]
    by_id = {s.story_id: s for s in backlog}

    def first_choice(me: str, other: str) -> str:
        choice = claims.choose_claims(
            backlog, me=me, stories=by_id, is_dead=dead_set(), capacities={other: 1}, busy=0, max_concurrent=1,
            waited=lambda _sid: 60.0, spread_delay=1.0)
        (picked,) = choice.now
        return picked.story_id

    a, b = first_choice("node-a", "node-b"), first_choice("node-b", "node-a")
    assert a != b
    assert claims.rank(a, {"node-a": 1, "node-b": 1})[0] == "node-a"
    assert claims.rank(b, {"node-a": 1, "node-b": 1})[0] == "node-b"
    # Later stages still come first, whatever the rank.
    merge = story("99_m", stage="4_merge")
    choice = claims.choose_claims(
        [*backlog, merge], me="node-a", stories={**by_id, "99_m": merge}, is_dead=dead_set(),
        capacities={"node-b": 1}, busy=0, max_concurrent=1, waited=lambda _sid: 60.0, spread_delay=1.0)
    assert [s.story_id for s in choice.now] == ["99_m"]
