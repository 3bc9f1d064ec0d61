"""Model test of claim protocol v2 (docs/claims.md) over the real document and policy code.

A Hypothesis state machine drives 3-4 simulated nodes (tests/model/sim.py) through random
claims, confirms, runs, checkpoints, finishes, partitions and heals, rendezvous restarts,
clock skews and people's moves, and checks invariants I1-I6 of issue 10 after every step.
Below it, deterministic regression tests for issue 10's findings 1-4 and 8.

``HUSKIES_HYPOTHESIS_PROFILE=long`` runs many more and longer examples locally.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from pycrdt import Doc
from tests.model.sim import SPREAD, TIMEOUT, World

from huskies_agent import claims
from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.pipeline.model import NodePresence

_PROFILES = {
    # About 90 s on a shared 2-core machine.
    "default": settings(max_examples=600, stateful_step_count=60, deadline=None, database=None,
                        suppress_health_check=[HealthCheck.too_slow]),
    "long": settings(max_examples=3000, stateful_step_count=150, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow]),
}
PROFILE = _PROFILES[os.environ.get("HUSKIES_HYPOTHESIS_PROFILE", "default")]

NODE = st.integers(0, 3)
STORY = st.integers(0, 4)


class ClaimProtocol(RuleBasedStateMachine):
    world: World

    @initialize(count=st.integers(3, 4), story_count=st.integers(2, 5),
                skews=st.lists(st.floats(-3600, 3600), min_size=4, max_size=4))
    def start(self, count: int, story_count: int, skews: list[float]) -> None:
        self.world = World(count, story_count, skews=skews)
        self.story_count = story_count

    def node(self, index: int) -> str:
        return list(self.world.nodes)[index % len(self.world.nodes)]

    def story(self, index: int) -> str:
        return f"{index % self.story_count + 1}_story"

    # ----------------------------------------------------------------- time and network
    @rule(seconds=st.sampled_from([1.0, 5.0, 10.0, 30.0, TIMEOUT + 10, 3 * TIMEOUT]))
    def advance(self, seconds: float) -> None:
        self.world.advance(seconds)

    @rule(n=NODE, kind=st.sampled_from(["cut", "heal", "heal", "up", "down", "up", "down", "restart", "back"]))
    def network(self, n: int, kind: str) -> None:
        """Cut or heal one link, deliver one direction of it, restart the rendezvous or bring it back."""
        world, node = self.world, self.world.nodes[self.node(n)]
        if kind == "cut":
            world.cut(node.id)
        elif kind == "heal":
            world.heal(node.id)
        elif kind == "up":
            world.flush_up(node)
        elif kind == "down":
            world.flush_down(node)
        elif kind == "restart":
            world.restart_hub()
        else:
            world.hub_back()

    @rule(n=NODE, seconds=st.floats(-3600, 3600))
    def skew_clock(self, n: int, seconds: float) -> None:
        self.world.nodes[self.node(n)].skew = seconds

    # ----------------------------------------------------------------- nodes
    @rule(n=NODE)
    def engine_turn(self, n: int) -> None:
        self.world.step(self.node(n))

    @rule(n=NODE)
    def confirm(self, n: int) -> None:
        self.world.confirm(self.node(n))

    @rule()
    def engine_round(self) -> None:
        """Every node claims, the claims settle, every node confirms (the common path)."""
        for node_id in self.world.nodes:
            self.world.step(node_id)
        self.world.advance(SPREAD + 1)
        for node_id in self.world.nodes:
            self.world.confirm(node_id)

    @rule(n=NODE, rounds=st.integers(1, 3))
    def partition(self, n: int, rounds: int) -> None:
        """One node is cut off past the claim timeout while the others go on working."""
        self.world.cut(self.node(n))
        self.world.advance(TIMEOUT + 2 * SPREAD)
        for _ in range(rounds):
            self.engine_round()

    @rule(i=st.integers(0, 15), kind=st.sampled_from(["work", "checkpoint", "ok", "ok", "fail"]))
    def run_event(self, i: int, kind: str) -> None:
        """Something happens to one of the runs going on (cut off or not)."""
        runs = sorted((n.id, sid) for n in self.world.nodes.values() for sid in n.runs)
        if not runs:
            return
        node_id, sid = runs[i % len(runs)]
        if kind == "work":
            self.world.work(node_id, sid)
        elif kind == "checkpoint":
            self.world.checkpoint(node_id, sid)
        else:
            self.world.finish(node_id, sid, kind == "ok")

    # ----------------------------------------------------------------- people
    @rule(s=STORY, stage=st.sampled_from(stages.ALL_STAGES), unblock=st.booleans())
    def person(self, s: int, stage: str, unblock: bool) -> None:
        if unblock:
            self.world.human_unblock(self.story(s))
        else:
            self.world.human_move(self.story(s), stage)

    @invariant()
    def invariants_hold(self) -> None:
        if hasattr(self, "world"):
            self.world.check_all()

    def teardown(self) -> None:
        if hasattr(self, "world"):
            for name in self.world.events:
                event(name)  # --hypothesis-show-statistics shows how often each path ran


ClaimProtocol.TestCase.settings = PROFILE
TestClaimProtocol = ClaimProtocol.TestCase
# The long profile runs as long as it needs; the default one stays near 90 s.
TestClaimProtocol.pytestmark = [pytest.mark.timeout(0 if PROFILE is _PROFILES["long"] else 600)]


# ============================================================================ regressions
def run_to_start(world: World, node_ids: list[str] | None = None) -> None:
    """Let the nodes claim, settle and start runs."""
    for _ in range(3):
        for node_id in node_ids or list(world.nodes):
            world.step(node_id)
        world.advance(SPREAD + 1)
        for node_id in node_ids or list(world.nodes):
            world.confirm(node_id)


def running(world: World) -> set[tuple[str, str, int]]:
    """(story, node, epoch) of every run going on."""
    return {(sid, n.id, run.epoch) for n in world.nodes.values() for sid, run in n.runs.items()}


@pytest.mark.parametrize("outage", [TIMEOUT + 1, 10 * TIMEOUT])
def test_finding1_rendezvous_outage_longer_than_the_timeout_takes_over_nothing(outage: float) -> None:
    world = World(3, 3)
    run_to_start(world)
    before = running(world)
    assert len(before) == 3
    epochs = {sid: s.top_epoch for sid, s in world.hub.doc.stories.items()}
    world.restart_hub()
    world.advance(outage)
    for node_id in world.nodes:  # engine turns during the outage write nothing (I4)
        world.step(node_id)
        world.confirm(node_id)
    world.hub_back()
    for node_id in reversed(list(world.nodes)):
        world.heal(node_id)
        world.step(node_id)  # the first to come back must not judge the others dead
    world.advance(TIMEOUT * 3)
    for node_id in world.nodes:
        world.step(node_id)
    world.check_all()
    assert running(world) == before and world.stops == []
    assert {sid: s.top_epoch for sid, s in world.hub.doc.stories.items()} == epochs
    for n in world.nodes.values():
        for sid in list(n.runs):
            world.finish(n.id, sid, True)
    world.deliver_all()
    world.check_all()
    assert {s.stage for s in world.hub.doc.stories.values()} == {stages.QA}


def _stale_completion(a_first: bool) -> PipelineDoc:
    """Finding 2 at the document level: A, cut off at epoch 1, completes after B and C
    advanced the story twice. Returns the merged hub."""
    ids = (1, 2, 3) if a_first else (3, 2, 1)
    a, b, c = (PipelineDoc(Doc(client_id=i)) for i in ids)
    hub = PipelineDoc(Doc(client_id=99))
    hub.add_story("1_s", stage=stages.CURRENT)

    def sync(*docs: PipelineDoc) -> None:
        for doc in docs:
            hub.apply_remote(doc.encode_update(hub.state_vector()))
        for doc in docs:
            doc.apply_remote(hub.encode_update(doc.state_vector()))

    sync(a, b, c)
    a_claim = a.claim("1_s", "node-a", 1.0)
    sync(a, b, c)  # A is now cut off: it syncs no more
    assert b.claim("1_s", "node-b", 2.0).epoch == 2  # takeover: a higher claim of B's own
    assert b.complete("1_s", "node-b", 2, stages.CURRENT, 3.0) == stages.QA
    sync(b, c)
    assert c.claim("1_s", "node-c", 4.0).epoch == 3
    assert c.complete("1_s", "node-c", 3, stages.QA, 5.0) == stages.MERGE
    sync(b, c)
    # Even written while cut off (which gating forbids), A's stale completion cannot win.
    assert a.complete("1_s", "node-a", a_claim.epoch, stages.CURRENT, 6.0) == stages.QA
    sync(a, b, c)
    return hub


@pytest.mark.parametrize("a_first", [True, False], ids=["a-lower-client-id", "a-higher-client-id"])
def test_finding2_stale_cut_off_completion_cannot_win_whatever_the_client_ids(a_first: bool) -> None:
    hub = _stale_completion(a_first)
    story = hub.story("1_s")
    assert story is not None
    assert (story.stage, story.stage_epoch, story.moved_by, story.claimed_by) == (stages.MERGE, 3, "node-c", "")
    assert story.top_epoch == 3


def test_finding2_in_the_simulation_the_stale_run_is_fenced_and_taken_over_from_its_checkpoint() -> None:
    world = World(3, 1)
    run_to_start(world)
    ((_, holder, epoch),) = running(world)
    world.work(holder, "1_story")
    world.checkpoint(holder, "1_story")
    checkpoint = world.branches["1_story"].tip
    world.cut(holder)
    world.work(holder, "1_story")  # the cut-off run goes on (a partition is not a reason to stop)
    world.advance(TIMEOUT + 2 * SPREAD)
    run_to_start(world, [n for n in world.nodes if n != holder])
    ((_, taker, taken_epoch),) = [r for r in running(world) if r[1] != holder]
    assert taken_epoch == epoch + 1
    taker_run = world.nodes[taker].runs["1_story"]
    assert checkpoint is not None and checkpoint.units <= taker_run.base  # resumed from the checkpoint
    world.finish(taker, "1_story", True)
    world.finish(holder, "1_story", True)  # the stale run finishes: its push is fenced
    world.heal(holder)
    world.advance(STAGES_SETTLE)
    world.check_all()
    story = world.hub.doc.story("1_story")
    assert story is not None and story.stage == stages.QA and story.stage_epoch == taken_epoch
    assert {p.epoch for p in world.branches["1_story"].landed} == {epoch, taken_epoch}


STAGES_SETTLE = 2 * SPREAD


def test_finding3_epochs_are_never_reused_and_a_moved_back_story_is_not_skipped() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage=stages.QA)
    seen = []
    c = d.claim("1_s", "n", 1.0)
    seen.append(c.epoch)
    d.release("1_s", "n", 2.0)
    c = d.claim("1_s", "m", 3.0)
    seen.append(c.epoch)
    # A person moves the story back while m's QA run is finishing: m's completion is void.
    d.move("1_s", stages.CURRENT, writer="cli-1")
    assert d.complete("1_s", "m", c.epoch, stages.QA, 4.0) is None
    s = d.story("1_s")
    assert s is not None and s.stage == stages.CURRENT
    c = d.claim("1_s", "m", 5.0)
    seen.append(c.epoch)
    # A completion is for the run's stage only: the coder run advances to 3_qa, never further.
    assert d.complete("1_s", "m", c.epoch, stages.QA, 6.0) is None
    assert d.complete("1_s", "m", c.epoch, stages.CURRENT, 6.0) == stages.QA
    seen.append(d.claim("1_s", "n", 7.0).epoch)
    assert seen == sorted(set(seen)) and len(seen) == 4


def test_finding3_a_claim_racing_a_persons_move_at_the_same_epoch_loses() -> None:
    node, person = PipelineDoc(), PipelineDoc()
    node.add_story("1_s", stage=stages.CURRENT)
    person.apply_remote(node.encode_update())
    c = node.claim("1_s", "zz-node", 1.0)  # sorts above "cli-..." and still must lose
    person.move("1_s", stages.DONE, writer="cli-1")
    assert c.epoch == person.story("1_s").stage_epoch == 1
    assert node.complete("1_s", "zz-node", 1, stages.CURRENT, 2.0) == stages.QA  # not seen the move yet
    node.apply_remote(person.encode_update(node.state_vector()))
    person.apply_remote(node.encode_update(person.state_vector()))
    assert node.story("1_s") == person.story("1_s")
    assert person.story("1_s").stage == stages.DONE


@pytest.mark.parametrize("skews", [(-900.0, 900.0, 0.0), (900.0, -900.0, 3600.0)])
def test_finding4_skewed_clocks_and_forged_last_seen_change_no_liveness_verdict(skews: tuple[float, ...]) -> None:
    def verdicts(world: World) -> list[tuple[str, str, bool]]:
        return [(n.id, o, n.is_dead(o)) for n in world.nodes.values() for o in world.nodes if o != n.id]

    def scenario(skewed: bool) -> list[list[tuple[str, str, bool]]]:
        world = World(3, 2, skews=skews if skewed else ())
        history = []
        run_to_start(world)
        if skewed:  # node-b forges a last_seen far in the future
            world.nodes["node-b"].doc.put_presence(NodePresence(node_id="node-b", last_seen=1e12, capacity=1))
        history.append(verdicts(world))
        world.cut("node-c")
        for _ in range(8):
            world.advance(TIMEOUT / 4)
            for node_id in world.nodes:
                world.step(node_id)
            history.append(verdicts(world))
        world.check_all()
        return history

    skewed, plain = scenario(True), scenario(False)
    assert skewed == plain
    # node-c, cut off, is judged dead after the timeout by both others; nobody else ever is.
    assert ("node-a", "node-c", True) in skewed[-1] and ("node-b", "node-c", True) in skewed[-1]
    assert not any(dead for step in skewed for (_, other, dead) in step if other != "node-c")


@pytest.mark.parametrize("node_count", [2, 5])
def test_finding8_hrw_spreads_first_choices_by_capacity(node_count: int) -> None:
    capacities = {f"node-{i}": 4 for i in range(node_count)}
    firsts = Counter(claims.rank(f"{i}_story", capacities)[0] for i in range(2000))
    for node in capacities:
        assert abs(firsts[node] / 2000 - 1 / node_count) <= 0.2 / node_count, firsts


@pytest.mark.parametrize("node_count", [2, 5])
def test_finding8_nodes_claim_what_they_rank_first_without_races(node_count: int) -> None:
    world = World(node_count, 1000, slots=1000)
    for node_id in world.nodes:
        world.step(node_id)  # before any spread delay passed: each claims its first choices only
    world.deliver_all()
    world.check_all()
    claimed: Counter[str] = Counter()
    raced = 0
    for story in world.hub.doc.stories.values():
        holders = [c.node for c in story.claims if c.held]
        raced += len(holders) > 1
        claimed.update(holders)
    assert raced == 0 and sum(claimed.values()) == 1000
    for node_id in world.nodes:
        assert abs(claimed[node_id] / 1000 - 1 / node_count) <= 0.2 / node_count, claimed
