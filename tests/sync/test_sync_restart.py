"""The rendezvous dies and comes back: clients reconnect by themselves and nothing is lost."""

from __future__ import annotations

import asyncio

from tests.helpers.rendezvous import Clients, RendezvousProcess, synced_client, wait_until

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import PipelineDoc


async def _keep_writing(doc: PipelineDoc, story_id: str, stop: asyncio.Event) -> int:
    """Rename ``story_id`` every few milliseconds until ``stop``; returns the last number written."""
    count = 0
    while not stop.is_set():
        count += 1
        doc.put_raw(story_id, name=f"v{count}")
        await asyncio.sleep(0.005)
    return count


async def test_server_killed_mid_stream_then_restarted(rendezvous: RendezvousProcess, clients: Clients) -> None:
    a_doc, a = await clients.start(rendezvous.url)
    b_doc, b = await clients.start(rendezvous.url)
    states: list[bool] = []
    a.on_state(states.append)
    for story_id in ("s1", "s2", "s3"):
        a_doc.add_story(story_id, stage=stages.CURRENT)
    assert await a.confirm(5)
    await wait_until(lambda: len(b_doc) == 3)

    stop = asyncio.Event()
    writer = asyncio.create_task(_keep_writing(a_doc, "s1", stop))
    await asyncio.sleep(0.1)
    await rendezvous.akill()
    await wait_until(lambda: not a.connected and not b.connected, what="both clients notice the loss")

    # Offline edits on both sides while the server is away.
    a_doc.add_story("offline-a", stage=stages.BACKLOG)
    b_doc.add_story("offline-b", stage=stages.BACKLOG)
    b_doc.move("s2", stages.MERGE)
    b_doc.set_blocked("s3", True)
    await asyncio.sleep(0.3)  # a few failed reconnection attempts

    await rendezvous.astart()
    await a.wait_synced(15)
    await b.wait_synced(15)
    await asyncio.sleep(0.1)
    stop.set()
    last = await writer
    assert await a.confirm(5) and await b.confirm(5)

    await wait_until(lambda: dict(a_doc.stories) == dict(b_doc.stories), what="a and b converge")
    async with synced_client(rendezvous.url) as (c_doc, _):
        assert dict(c_doc.stories) == dict(a_doc.stories)
    assert {"offline-a", "offline-b"} <= set(a_doc.stories)
    s1, s2, s3 = (a_doc.story(s) for s in ("s1", "s2", "s3"))
    assert s1 is not None and s1.name == f"v{last}"
    assert s2 is not None and s2.stage == stages.MERGE
    assert s3 is not None and s3.blocked
    assert a.stats.connects >= 2 and a.stats.disconnects >= 1 and a.stats.connect_failures >= 1
    assert states[:2] == [False, True]  # the hook saw the loss and the return

    # Everyone leaves; the server alone keeps the document across another restart.
    expected = dict(a_doc.stories)
    await clients.stop_all()
    await rendezvous.arestart(graceful=True)
    async with synced_client(rendezvous.url) as (d_doc, _):
        assert dict(d_doc.stories) == expected


async def test_server_restarted_empty_is_reseeded_by_the_clients(
    rendezvous: RendezvousProcess, clients: Clients
) -> None:
    doc, client = await clients.start(rendezvous.url)
    doc.add_story("seed", stage=stages.QA)
    assert await client.confirm(5)
    await rendezvous.akill()
    rendezvous.db_path.unlink()  # the server loses its state entirely
    for suffix in ("-wal", "-shm"):
        rendezvous.db_path.with_name(rendezvous.db_path.name + suffix).unlink(missing_ok=True)
    await rendezvous.astart()
    await client.wait_synced(15)
    assert await client.confirm(5)
    async with synced_client(rendezvous.url) as (fresh, _):
        assert fresh.story("seed") is not None
