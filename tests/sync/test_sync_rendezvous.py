"""Clients and a real rendezvous subprocess on loopback: convergence, claims, confirmation."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from pycrdt import Map
from tests.helpers.rendezvous import Clients, RendezvousProcess, synced_client, wait_until

from huskies_agent.pipeline import stages


async def test_two_clients_converge_after_concurrent_edits(rendezvous: RendezvousProcess, clients: Clients) -> None:
    a_doc, a = await clients.start(rendezvous.url)
    b_doc, b = await clients.start(rendezvous.url)
    a_doc.add_story("s1", stage=stages.CURRENT, name="first")
    await wait_until(lambda: b_doc.story("s1") is not None, what="s1 at b")

    # Concurrent edits: nobody waits for the other side in between.
    a_doc.move("s1", stages.QA)
    b_doc.set_blocked("s1", True)
    a_doc.add_story("s2", stage=stages.BACKLOG, depends_on=["s1"])
    b_doc.add_story("s3", stage=stages.MERGE, name="from b")
    b_doc.put_raw("s1", name="renamed by b")
    assert await a.confirm(5) and await b.confirm(5)

    await wait_until(lambda: dict(a_doc.stories) == dict(b_doc.stories), what="a == b")
    async with synced_client(rendezvous.url) as (c_doc, _):
        assert dict(c_doc.stories) == dict(a_doc.stories)
    s1 = a_doc.story("s1")
    assert s1 is not None and (s1.stage, s1.blocked, s1.name) == (stages.QA, True, "renamed by b")
    assert set(a_doc.stories) == {"s1", "s2", "s3"}
    assert a.stats.updates_sent >= 3 and b.stats.updates_received >= 2


async def test_simultaneous_claims_end_with_one_winner_everywhere(
    rendezvous: RendezvousProcess, clients: Clients
) -> None:
    a_doc, a = await clients.start(rendezvous.url)
    b_doc, b = await clients.start(rendezvous.url)
    a_doc.add_story("race", stage=stages.CURRENT)
    assert await a.confirm(5)
    await wait_until(lambda: b_doc.story("race") is not None)

    claim_a = a_doc.claim("race", "node-a", 100.0)
    claim_b = b_doc.claim("race", "node-b", 100.0)
    assert claim_a.epoch == claim_b.epoch == 1
    assert await a.confirm(5) and await b.confirm(5)

    def claimant(doc_stories: object) -> str:
        return getattr(doc_stories, "claimed_by", "")

    await wait_until(lambda: claimant(a_doc.story("race")) == claimant(b_doc.story("race")), what="same winner")
    async with synced_client(rendezvous.url) as (c_doc, _):
        winner = claimant(c_doc.story("race"))
    assert winner in {"node-a", "node-b"}
    assert claimant(a_doc.story("race")) == claimant(b_doc.story("race")) == winner
    story = a_doc.story("race")
    assert story is not None and story.epoch == 1


async def test_confirm_means_the_server_holds_the_update(rendezvous: RendezvousProcess, clients: Clients) -> None:
    doc, client = await clients.start(rendezvous.url)
    for index in range(8):
        doc.add_story(f"c{index}", stage=stages.CURRENT)
        doc.claim(f"c{index}", "node-a", float(index))
        assert await client.confirm(5)
        # A fresh replica learns only from the server: the edit must already be there.
        async with synced_client(rendezvous.url) as (fresh, _):
            story = fresh.story(f"c{index}")
            assert story is not None and story.claimed_by == "node-a"
    assert client.stats.confirms == 8 and client.stats.confirm_failures == 0


async def test_confirm_fails_while_the_server_is_down_and_succeeds_after(
    rendezvous: RendezvousProcess, clients: Clients
) -> None:
    doc, client = await clients.start(rendezvous.url)
    await rendezvous.akill()
    doc.add_story("late", stage=stages.CURRENT)
    assert not await client.confirm(0.3)
    assert client.stats.confirm_failures == 1

    await rendezvous.astart()
    assert await client.confirm(10)  # waits for the reconnection, then confirms
    async with synced_client(rendezvous.url) as (fresh, _):
        assert fresh.story("late") is not None


async def test_edits_survive_a_server_kill_once_confirmed(rendezvous: RendezvousProcess, clients: Clients) -> None:
    doc, client = await clients.start(rendezvous.url)
    doc.add_story("kept", stage=stages.QA, name="must survive SIGKILL")
    assert await client.confirm(5)
    await clients.stop(client)

    await rendezvous.arestart(graceful=False)  # SIGKILL: nothing is flushed at exit
    async with synced_client(rendezvous.url) as (fresh, _):
        story = fresh.story("kept")
        assert story is not None and story.name == "must survive SIGKILL"

    assert await rendezvous.astop() == 0  # SIGTERM: graceful, compacts into one snapshot
    with closing(sqlite3.connect(rendezvous.db_path)) as db:
        assert db.execute("SELECT COUNT(*) FROM updates").fetchone()[0] == 1
    await rendezvous.astart()
    async with synced_client(rendezvous.url) as (fresh, _):
        assert fresh.story("kept") is not None
        assert fresh.schema_version == 1


async def test_malformed_entries_from_a_peer_do_not_break_the_client(
    rendezvous: RendezvousProcess, clients: Clients
) -> None:
    writer_doc, writer = await clients.start(rendezvous.url)
    reader_doc, reader = await clients.start(rendezvous.url)
    writer_doc.add_story("good", stage=stages.CURRENT)
    writer_doc.add_story("bad-types", stage=stages.CURRENT)
    writer_doc.put_raw("bad-types", retry_count="many", blocked="perhaps", stage=7)
    # A peer that ignores the schema altogether (not a PipelineDoc writer).
    items = writer_doc.doc.get("items", type=Map)
    items["not-a-map"] = "just a string"
    items["wrong-stage"] = Map({"story_id": "wrong-stage", "stage": "9_nowhere"})
    assert await writer.confirm(5)

    await wait_until(lambda: len(reader_doc.malformed) == 3, what="three malformed entries at the reader")
    assert set(reader_doc.malformed) == {"bad-types", "not-a-map", "wrong-stage"}
    assert set(reader_doc.stories) == {"good"}
    # The connection is still healthy: later edits keep flowing both ways.
    writer_doc.add_story("after", stage=stages.BACKLOG)
    reader_doc.move("good", stages.QA)
    await wait_until(lambda: reader_doc.story("after") is not None)
    await wait_until(lambda: getattr(writer_doc.story("good"), "stage", "") == stages.QA)
    assert reader.stats.disconnects == 0 and writer.stats.disconnects == 0
