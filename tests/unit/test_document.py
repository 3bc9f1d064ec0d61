from __future__ import annotations

import json

import pytest
from pycrdt import Map

from huskies_agent.pipeline.document import Changes, PipelineDoc, StoryNotFound
from huskies_agent.pipeline.model import Claim, MalformedEntry, NodePresence, StageMove, resolve


def sync(a: PipelineDoc, b: PipelineDoc) -> None:
    ua = a.encode_update(b.state_vector())
    ub = b.encode_update(a.state_vector())
    b.apply_remote(ua)
    a.apply_remote(ub)


def test_story_roundtrip_and_ints_from_floats() -> None:
    a, b = PipelineDoc(), PipelineDoc()
    a.add_story("12_x", stage="2_current", name="X", depends_on=["11_y"])
    sync(a, b)
    s = b.story("12_x")
    assert s is not None and s.stage == "2_current" and s.depends_on == ("11_y",)
    assert isinstance(s.retry_count, int) and s.retry_count == 0


# ---------------------------------------------------------------------------- registers (pure)
C, Q, M = "2_current", "3_qa", "4_merge"


@pytest.mark.parametrize(("claims", "moves", "stage", "stage_epoch", "top", "winner"), [
    ([], [], C, 0, 0, None),
    ([Claim("a", 1, stage=C)], [], C, 0, 1, ("a", 1)),
    # Same epoch: the higher node id wins, on every replica, whatever the client ids.
    ([Claim("a", 1, stage=C), Claim("b", 1, stage=C)], [], C, 0, 1, ("b", 1)),
    # A higher epoch wins over a higher node id.
    ([Claim("z", 1, stage=C), Claim("b", 2, stage=C)], [], C, 0, 2, ("b", 2)),
    # The winner released: nobody holds it, even though a lower claim is still held.
    ([Claim("a", 1, stage=C), Claim("b", 2, stage=C, held=False)], [], C, 0, 2, None),
    # Completed at epoch 1: the stage moved at epoch 1 and voids the claim at 1.
    ([Claim("a", 1, stage=C, held=False)], [StageMove("a", Q, 1)], Q, 1, 1, None),
    # A stale (lower-epoch) completion never beats a newer stage move (finding 2).
    ([Claim("a", 1, stage=C, held=False), Claim("b", 3, stage=Q, held=False)],
     [StageMove("a", Q, 1), StageMove("b", M, 3)], M, 3, 3, None),
    # A claim made for another stage than the current one is void.
    ([Claim("a", 2, stage=C)], [StageMove("cli-1", Q, 1)], Q, 1, 2, None),
    # A person's move at top+1 fences the running claim.
    ([Claim("a", 2, stage=C)], [StageMove("cli-1", C, 3)], C, 3, 3, None),
    ([Claim("a", 4, stage=C)], [StageMove("cli-1", C, 3)], C, 3, 4, ("a", 4)),
    # A person's move wins a tie with a node's completion at its epoch, however the ids sort.
    ([Claim("zz", 3, stage=C, held=False)], [StageMove("zz", Q, 3), StageMove("cli-1", M, 3, human=True)],
     M, 3, 3, None),
])
def test_resolve(claims: list[Claim], moves: list[StageMove], stage: str, stage_epoch: int, top: int,
                 winner: tuple[str, int] | None) -> None:
    for order in (claims, list(reversed(claims))):
        r = resolve(C, order, list(reversed(moves)))
        assert (r.stage, r.stage_epoch, r.top_epoch) == (stage, stage_epoch, top)
        assert (r.claim.node, r.claim.epoch) == winner if r.claim else winner is None


@pytest.mark.parametrize(("claims", "moves", "legacy", "retries"), [
    ([Claim("a", 3, stage=C, held=False, fails=(1, 2, 3))], [], 0, 3),
    # Distinct epochs over all nodes' entries; duplicates count once.
    ([Claim("a", 2, stage=C, held=False, fails=(1, 2)), Claim("b", 2, stage=C, held=False, fails=(2,))], [], 0, 2),
    # A stage move voids the fails at or below its epoch.
    ([Claim("a", 5, stage=C, held=False, fails=(1, 2, 5))], [StageMove("cli-1", C, 4)], 0, 1),
    # The schema-1 retry_count counts only until a stage move supersedes the author's stage.
    ([], [], 2, 2),
    ([], [StageMove("cli-1", C, 1)], 2, 0),
])
def test_retry_count(claims: list[Claim], moves: list[StageMove], legacy: int, retries: int) -> None:
    assert resolve(C, claims, moves, legacy_retries=legacy).retry_count == retries


# ---------------------------------------------------------------------------- writes
def test_concurrent_claims_converge_to_the_same_winner_in_both_client_orders() -> None:
    for _ in range(8):  # random client ids each time: the winner must not depend on them
        a, b = PipelineDoc(), PipelineDoc()
        a.add_story("1_s", stage="2_current")
        sync(a, b)
        ca = a.claim("1_s", "node-a", 1.0)
        cb = b.claim("1_s", "node-b", 1.0)
        assert ca.epoch == cb.epoch == 1
        sync(a, b)
        assert a.story("1_s") == b.story("1_s")
        assert a.story("1_s").claimed_by == "node-b"  # (1, "node-b") > (1, "node-a")


def test_claim_epochs_grow_and_release_keeps_epoch() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    assert d.claim("1_s", "n", 1.0).epoch == 1
    assert d.release("1_s", "n", 2.0)
    s = d.story("1_s")
    assert s.claim is None and s.top_epoch == 1 and s.entry_of("n") == Claim("n", 1, 2.0, "2_current", held=False)
    assert d.claim("1_s", "m", 3.0).epoch == 2
    assert not d.release("1_s", "n", 4.0)  # not ours: untouched
    assert d.story("1_s").claimed_by == "m"


def test_a_takeover_is_a_higher_claim_of_ones_own_never_a_write_of_anothers_key() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    d.claim("1_s", "dead", 1.0)
    taken = d.claim("1_s", "heir", 2.0)
    s = d.story("1_s")
    assert taken.epoch == 2 and s.claimed_by == "heir"
    assert s.entry_of("dead") == Claim("dead", 1, 1.0, "2_current")  # still as its owner wrote it


def test_complete_advances_only_the_runs_stage_at_the_winning_claim() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    c = d.claim("1_s", "n", 1.0)
    assert d.complete("1_s", "other", c.epoch, "2_current", 2.0) is None
    assert d.complete("1_s", "n", c.epoch + 1, "2_current", 2.0) is None
    assert d.complete("1_s", "n", c.epoch, "3_qa", 2.0) is None  # the run was not of this stage
    assert d.complete("1_s", "n", c.epoch, "2_current", 2.0) == "3_qa"
    s = d.story("1_s")
    assert (s.stage, s.stage_epoch, s.claimed_by) == ("3_qa", 1, "")
    # Completing twice advances nothing twice (I2).
    assert d.complete("1_s", "n", c.epoch, "2_current", 3.0) is None
    assert d.claim("1_s", "n", 4.0).epoch == 2  # epochs are never reused


def test_a_human_move_during_a_run_fences_its_completion() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage="3_qa")
    c = d.claim("1_s", "n", 1.0)
    d.move("1_s", "2_current", writer="cli-7")
    s = d.story("1_s")
    assert (s.stage, s.stage_epoch, s.claimed_by) == ("2_current", 2, "")
    assert d.complete("1_s", "n", c.epoch, "3_qa", 2.0) is None  # finding 3: no skip
    assert d.story("1_s").stage == "2_current"


def test_failures_count_and_block() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    for i in range(1, 4):
        c = d.claim("1_s", "n", float(i))
        assert d.record_failure("1_s", "other", c.epoch, "2_current", 0.0, reason="x", max_retries=3) is None
        retries, blocked = d.record_failure("1_s", "n", c.epoch, "2_current", float(i), reason="boom",
                                            max_retries=3)
        assert retries == i and blocked == (i == 3)
    s = d.story("1_s")
    assert s.blocked and s.retry_count == 3 and s.last_error == "boom" and s.entry_of("n").fails == (1, 2, 3)


def test_unblock_with_reset_voids_the_fails_and_plain_block_fences_nothing() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    c = d.claim("1_s", "n", 1.0)
    d.record_failure("1_s", "n", c.epoch, "2_current", 1.0, reason="boom", max_retries=1)
    d.set_blocked("1_s", False, reset_retries=True, writer="cli-1")
    s = d.story("1_s")
    assert not s.blocked and s.retry_count == 0 and s.stage_epoch == 2 and s.stage == "2_current"
    c = d.claim("1_s", "n", 2.0)
    assert c.epoch == 3 and c.fails == (1,)  # the node keeps its history; it no longer counts
    d.set_blocked("1_s", True, writer="cli-1")
    d.set_blocked("1_s", False, reset_retries=True, writer="cli-1")  # nothing to reset: no fence
    assert d.story("1_s").claimed_by == "n"


def _raw(doc: PipelineDoc, story_id: str) -> dict[str, object]:
    return json.loads(str(doc.doc.get("items", type=Map)[story_id]))


def test_writes_touch_only_the_writers_own_keys() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    d.claim("1_s", "other", 0.5)
    steps = [
        ("n", lambda: d.claim("1_s", "n", 1.0)),
        ("n", lambda: d.release("1_s", "n", 2.0)),
        ("n", lambda: d.claim("1_s", "n", 3.0)),
        ("n", lambda: d.record_failure("1_s", "n", 3, "2_current", 4.0, reason="x", max_retries=1)),
        ("n", lambda: d.claim("1_s", "n", 5.0)),
        ("n", lambda: d.complete("1_s", "n", 4, "2_current", 6.0)),
        ("cli-9", lambda: d.move("1_s", "2_current", writer="cli-9")),
        ("cli-9", lambda: d.set_blocked("1_s", False, reset_retries=True, writer="cli-9")),
    ]
    plain = {"last_error", "blocked"}
    for writer, write in steps:
        before = _raw(d, "1_s")
        write()
        after = _raw(d, "1_s")
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        assert changed and changed <= {f"claim@{writer}", f"stage@{writer}"} | plain, (writer, changed)
    assert _raw(d, "1_s")["claim@other"] == {"epoch": 1, "stage": "2_current", "held": True, "at": 0.5,
                                              "fails": []}


def test_claim_many_skips_unknown_and_malformed_ids() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    d.add_story("2_bad", stage="2_current")
    d.put_raw("2_bad", stage=7)
    assert set(d.claim_many(["1_s", "2_bad", "9_none"], "n", 1.0)) == {"1_s"}
    with pytest.raises(StoryNotFound):
        d.claim("9_none", "n", 1.0)
    with pytest.raises(MalformedEntry):
        d.move("2_bad", "3_qa")


def test_legacy_single_claim_value_is_read_as_its_nodes_entry() -> None:
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    d.put_raw("1_s", claim={"node": "node-js", "epoch": 4.0, "at": 1.5}, retry_count=2)
    s = d.story("1_s")
    assert (s.claimed_by, s.epoch, s.retry_count) == ("node-js", 4, 2)
    assert d.claim("1_s", "n", 2.0).epoch == 5
    d.put_raw("1_s", claim={"node": "", "epoch": 9, "at": 1.5})  # released: still counts for epochs
    assert d.story("1_s").top_epoch == 9


@pytest.mark.parametrize("fields", [
    {"claim": "not-an-object"},
    {"claim@n": "not-an-object"},
    {"claim@n": {"epoch": 0, "stage": "2_current"}},
    {"claim@n": {"epoch": 1, "stage": "9_nowhere"}},
    {"claim@n": {"epoch": 1, "stage": "2_current", "fails": "many"}},
    {"claim@": {"epoch": 1, "stage": "2_current"}},
    {"stage@w": {"epoch": 1, "stage": 42}},
    {"stage@w": {"epoch": -1, "stage": "3_qa"}},
    {"stage@w": [1, 2]},
])
def test_malformed_register_entries_skip_the_story_not_the_replica(fields: dict[str, object]) -> None:
    a, b = PipelineDoc(), PipelineDoc()
    a.add_story("1_s", stage="2_current")
    a.add_story("2_ok", stage="2_current")
    a.put_raw("1_s", **fields)
    sync(a, b)
    assert set(b.stories) == {"2_ok"} and set(b.malformed) == {"1_s"}


def test_malformed_entries_are_skipped_not_fatal() -> None:
    a, b = PipelineDoc(), PipelineDoc()
    a.add_story("1_ok", stage="2_current")
    a.add_story("2_bad", stage="2_current")
    a.put_raw("2_bad", stage=42, retry_count="many")
    a.put_raw("1_ok", claim="not-an-object")
    a.add_stories([{"story_id": "3_ok", "stage": "3_qa", "retry_count": 2.0}])
    sync(a, b)
    assert set(b.stories) == {"3_ok"}
    assert set(b.malformed) == {"1_ok", "2_bad"}
    a.put_raw("1_ok", claim={"node": "n", "epoch": 1.0, "at": 3})
    sync(a, b)
    assert b.story("1_ok").claim.epoch == 1


def test_listeners_see_changed_ids_and_origin() -> None:
    a, b = PipelineDoc(), PipelineDoc()
    seen: list[Changes] = []
    b.add_listener(seen.append)
    a.add_story("1_s", stage="2_current")
    a.put_presence(NodePresence(node_id="n1", last_seen=5.0))
    sync(a, b)
    assert any("1_s" in c.stories and c.remote for c in seen)
    assert any("n1" in c.nodes for c in seen)
    assert b.nodes["n1"].last_seen == 5.0
    seen.clear()
    b.move("1_s", "3_qa")
    assert seen and seen[-1].stories == {"1_s"} and not seen[-1].remote


def test_presence_seq_grows_so_every_write_reaches_the_others() -> None:
    a, b = PipelineDoc(), PipelineDoc()
    heard: list[Changes] = []
    b.add_listener(heard.append)
    same = NodePresence(node_id="n", last_seen=1.0, capacity=2)
    for expected in (1, 2, 3):
        a.put_presence(same)  # an identical value each time
        sync(a, b)
        assert b.nodes["n"].seq == expected
    assert sum(1 for c in heard if "n" in c.nodes and c.remote) == 3
    # A restarted node (fresh document) continues above the seq it finds.
    c = PipelineDoc()
    sync(a, c)
    c.put_presence(same)
    assert c.nodes["n"].seq == 4


def test_presence_overwrites_do_not_grow_the_document() -> None:
    d = PipelineDoc()
    d.put_presence(NodePresence(node_id="n", last_seen=0.0))
    size0 = len(d.encode_update())
    for i in range(1000):
        d.put_presence(NodePresence(node_id="n", last_seen=float(i), capacity=i % 5))
    assert len(d.encode_update()) - size0 < 2000


def test_a_persons_release_fences_a_nodes_claims_with_moves_of_its_own() -> None:
    """`huskies-agent release`: a person frees a dead node's claims without writing its keys."""
    d, node = PipelineDoc(), PipelineDoc()
    d.add_story("1_a", stage="2_current")
    d.add_story("2_b", stage="3_qa")
    d.add_story("3_c", stage="2_current")
    sync(d, node)
    a = node.claim("1_a", "dead", 1.0)
    b = node.claim("2_b", "dead", 1.0)
    node.record_failure("2_b", "dead", b.epoch, "3_qa", 2.0, reason="x", max_retries=3)
    b = node.claim("2_b", "dead", 3.0)
    node.claim("3_c", "alive", 1.0)
    sync(d, node)
    before = {k: dict(v) for k, v in json.loads(str(d._items)).items()}
    released = d.release_held_by("dead", writer="cli-9")
    assert sorted(released) == ["1_a", "2_b"]
    after = {k: dict(v) for k, v in json.loads(str(d._items)).items()}
    for sid in after:  # only the person's own stage@ key was written, never claim@dead
        changed = {k for k in after[sid] if after[sid].get(k) != before[sid].get(k)}
        assert changed <= {"stage@cli-9"}
    s1, s2, s3 = d.story("1_a"), d.story("2_b"), d.story("3_c")
    assert (s1.stage, s1.claimed_by, s1.moved_by, s1.stage_epoch) == ("2_current", "", "cli-9", a.epoch + 1)
    assert (s2.stage, s2.claimed_by, s2.retry_count) == ("3_qa", "", 0)  # like any person's move
    assert s3.claimed_by == "alive"
    # Every replica agrees, and the dead node's late completion loses.
    sync(d, node)
    assert node.story("1_a").claimed_by == "" and node.story("2_b").claimed_by == ""
    assert node.complete("2_b", "dead", b.epoch, "3_qa", 9.0) is None
    # The next claim of any node goes above the move and holds.
    assert node.claim("1_a", "other", 9.0).epoch == a.epoch + 2 and node.story("1_a").claimed_by == "other"
