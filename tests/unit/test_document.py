from huskies_agent.pipeline.document import Changes, PipelineDoc
from huskies_agent.pipeline.model import NodePresence


def sync(a: PipelineDoc, b: PipelineDoc) -> None:
    ua = a.encode_update(b.state_vector())
    ub = b.encode_update(a.state_vector())
    b.apply_remote(ua)
    a.apply_remote(ub)


def test_story_roundtrip_and_ints_from_floats():
    a, b = PipelineDoc(), PipelineDoc()
    a.add_story("12_x", stage="2_current", name="X", depends_on=["11_y"])
    sync(a, b)
    s = b.story("12_x")
    assert s is not None and s.stage == "2_current" and s.depends_on == ("11_y",)
    assert isinstance(s.retry_count, int) and s.retry_count == 0


def test_concurrent_claims_converge_to_one_winner():
    a, b = PipelineDoc(), PipelineDoc()
    a.add_story("1_s", stage="2_current")
    sync(a, b)
    ca = a.claim("1_s", "node-a", 1.0)
    cb = b.claim("1_s", "node-b", 1.0)
    assert ca.epoch == cb.epoch == 1
    assert a.story("1_s").claimed_by == "node-a" and b.story("1_s").claimed_by == "node-b"  # not a lock
    sync(a, b)
    winner = a.story("1_s").claim
    assert winner == b.story("1_s").claim and winner.node in ("node-a", "node-b")


def test_claim_epochs_grow_and_release_keeps_epoch():
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    assert d.claim("1_s", "n", 1.0).epoch == 1
    assert d.release("1_s", "n", 2.0)
    assert d.story("1_s").claim.epoch == 1 and not d.story("1_s").claimed_by
    assert d.claim("1_s", "m", 3.0).epoch == 2
    assert not d.release("1_s", "n", 4.0)  # not ours: untouched
    assert d.story("1_s").claimed_by == "m"


def test_complete_advances_and_releases_only_for_holder():
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    c = d.claim("1_s", "n", 1.0)
    assert d.complete("1_s", "other", c.epoch, 2.0) is None
    assert d.complete("1_s", "n", c.epoch, 2.0) == "3_qa"
    s = d.story("1_s")
    assert s.stage == "3_qa" and not s.claimed_by


def test_failures_count_and_block():
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    for i in range(1, 4):
        c = d.claim("1_s", "n", float(i))
        retries, blocked = d.record_failure("1_s", "n", c.epoch, float(i), reason="boom", max_retries=3)
        assert retries == i and blocked == (i == 3)
    s = d.story("1_s")
    assert s.blocked and s.retry_count == 3 and s.last_error == "boom"


def test_malformed_entries_are_skipped_not_fatal():
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


def test_listeners_see_changed_ids_and_origin():
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


def test_presence_overwrites_do_not_grow_the_document():
    d = PipelineDoc()
    d.put_presence(NodePresence(node_id="n", last_seen=0.0))
    size0 = len(d.encode_update())
    for i in range(1000):
        d.put_presence(NodePresence(node_id="n", last_seen=float(i), capacity=i % 5))
    assert len(d.encode_update()) - size0 < 2000


def test_release_of_a_dead_nodes_claim_bumps_the_epoch():
    d = PipelineDoc()
    d.add_story("1_s", stage="2_current")
    d.claim("1_s", "dead", 1.0)
    assert d.release("1_s", "dead", 2.0, bump_epoch=True)
    assert d.story("1_s").claim.epoch == 2 and not d.story("1_s").claimed_by
    assert d.claim("1_s", "heir", 3.0).epoch == 3
