"""The rendezvous under hostile clients: nested values, a full document, slow readers, floods.

Every test runs the real server (a subprocess, with its SQLite database, where a
restart matters) and real clients; a raw socket plays the client that misbehaves.
"""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.helpers.rendezvous import Clients, RendezvousProcess, start_rendezvous, wait_until
from tests.sync.hostile import RawSocket, nested_update, refused_close, story_update, vm_rss_bytes
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync import protocol
from huskies_agent.sync.limits import ServerLimits
from huskies_agent.sync.server import RendezvousServer
from huskies_agent.sync.store import UpdateStore

MIB = 2**20


def _metrics(server: RendezvousProcess) -> str:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name} in:\n{text}")


async def _replicates(clients: Clients, url: str, story_id: str) -> PipelineDoc:
    """A write through a fresh client reaches another fresh client; returns the reader's document."""
    writer_doc, writer = await clients.start(url)
    reader_doc, _ = await clients.start(url)
    writer_doc.add_story(story_id, stage=stages.CURRENT)
    assert await writer.confirm(10)
    await wait_until(lambda: reader_doc.story(story_id) is not None, what=f"{story_id} replicated")
    return reader_doc


@pytest.mark.parametrize("depth", [300, 1200, 1_000_000])
async def test_nested_values_are_refused_and_the_server_keeps_serving(
    rendezvous: RendezvousProcess, clients: Clients, depth: int
) -> None:
    # 1 000 000 levels is 2 MB: applied, it would crash the CRDT library's decoder outright.
    code, reason = await refused_close(rendezvous.url, protocol.encode_update(nested_update(depth)))
    assert code == 1008 and "nested deeper than 256" in reason
    assert "refused a write from 127.0.0.1" in await rendezvous.await_log("nested deeper than 256")
    assert _metric(_metrics(rendezvous), 'huskies_rendezvous_refused_total{reason="value_too_deep"}') == 1
    await _replicates(clients, rendezvous.url, f"after-{depth}")
    await rendezvous.arestart()
    reader = await _replicates(clients, rendezvous.url, f"after-restart-{depth}")
    assert reader.story("s1") is None and f"after-{depth}" in reader.stories


async def test_a_database_holding_the_nested_value_still_starts(
    rendezvous_factory: Callable[..., RendezvousProcess], clients: Clients, tmp_path: Path
) -> None:
    """The issue's crash loop: the value got into the database before these checks existed."""
    directory = tmp_path / "legacy"
    store = UpdateStore(directory / "rendezvous.sqlite")
    await store.open()
    store.append(story_update("1_good", name="kept"))
    store.append(nested_update(1200))                      # old servers stored it, then crash-looped
    store.append(story_update("2_deep", name=[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]))  # 18 deep
    store.append(story_update("3_good"))
    await store.close()
    server = start_rendezvous(directory)
    try:
        assert "skipped stored update #1" in await server.await_log("skipped stored update")
        doc, _ = await clients.start(server.url)
        assert set(doc.stories) == {"1_good", "3_good"}
        assert "nested deeper than 16" in doc.malformed["2_deep"]  # applied, quarantined by the reader
        text = _metrics(server)
        assert _metric(text, "huskies_rendezvous_skipped_rows_total") == 1
        assert _metric(text, "huskies_rendezvous_document_quarantined") == 1
        await server.arestart()
        doc2, _ = await clients.start(server.url)
        assert set(doc2.stories) == {"1_good", "3_good"}
    finally:
        server.stop()


async def test_a_write_past_the_document_limit_is_refused_and_others_keep_syncing(
    rendezvous_factory: Callable[..., RendezvousProcess], clients: Clients
) -> None:
    server = rendezvous_factory(extra_args=["--max-document-bytes", "300000", "--max-update-bytes", "200000"])
    bystander_doc, bystander = await clients.start(server.url)
    hostile_doc, hostile = await clients.start(server.url)
    hostile_doc.add_story("1_big", stage=stages.BACKLOG, name="a" * 60_000, agent="a" * 60_000)
    hostile_doc.put_raw("1_big", last_error="a" * 60_000)
    assert await hostile.confirm(10)
    await wait_until(lambda: bystander_doc.story("1_big") is not None, what="first big write replicated")
    hostile_doc.add_story("2_big", stage=stages.BACKLOG, name="b" * 60_000, agent="b" * 60_000)  # 180 + 120 KB
    line = await server.await_log("the document would exceed its 300000-byte limit")
    assert "refused a write from 127.0.0.1" in line and "connection closed (1008)" in line
    await wait_until(lambda: "document limit" in hostile.stats.last_error, what="the writer told why")
    # The document stays usable: the bystander writes, a newcomer syncs the whole of it.
    bystander_doc.add_story("3_small", stage=stages.CURRENT)
    assert await bystander.confirm(10)
    newcomer = await _replicates(clients, server.url, "4_small")
    assert {"1_big", "3_small", "4_small"} <= set(newcomer.stories) and "2_big" not in newcomer.stories
    assert bystander.connected and bystander.stats.disconnects == 0
    text = _metrics(server)
    assert _metric(text, 'huskies_rendezvous_refused_total{reason="document_too_large"}') >= 1
    assert _metric(text, "huskies_rendezvous_document_bytes") <= 300_000


async def test_an_update_past_the_update_limit_is_refused(
    rendezvous_factory: Callable[..., RendezvousProcess], clients: Clients
) -> None:
    server = rendezvous_factory(extra_args=["--max-update-bytes", "20000"])
    code, reason = await refused_close(server.url, protocol.encode_update(story_update("1_s", name="x" * 30_000)))
    assert code == 1009 and "exceeds the 20000-byte limit" in reason
    await server.await_log("exceeds the 20000-byte limit")
    await _replicates(clients, server.url, "after-big-update")


async def test_connections_past_the_limit_are_refused(
    rendezvous_factory: Callable[..., RendezvousProcess], clients: Clients
) -> None:
    server = rendezvous_factory(extra_args=["--max-connections", "2"])
    await clients.start(server.url)
    await clients.start(server.url)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.url):
            pass
    assert refused.value.response.status_code == 503
    assert "2 clients connected, the limit" in await server.await_log("refused a connection")
    assert _metric(_metrics(server), 'huskies_rendezvous_refused_total{reason="too_many_connections"}') >= 1


async def test_a_client_over_the_write_rate_is_slowed_and_loses_nothing(clients: Clients) -> None:
    limits = ServerLimits(max_writes_per_second=20, write_burst=5)
    async with RendezvousServer(None, port=0, limits=limits) as server:
        reader_doc, _ = await clients.start(server.url)
        async with connect(server.url) as ws:
            for index in range(40):
                await ws.send(protocol.encode_update(story_update(f"{index}_flood")))
            await wait_until(lambda: len(reader_doc.stories) == 40, timeout=30, what="every flooded write")
        assert server.metrics.throttled._value.get() >= 1  # 40 writes, 5 of burst: most waited


async def test_a_client_that_stops_reading_does_not_grow_the_servers_memory(
    rendezvous_factory: Callable[..., RendezvousProcess], clients: Clients
) -> None:
    """The issue's attack: STEP1s with an empty state vector, never reading, while the document grows.

    Unbounded, every STEP1 queues a copy of the whole document (here 60 x 1.5 MB = 90 MB
    and growing); bounded, the client is dropped once 4 MiB are pending for it.
    """
    outbox = 4 * MIB
    server = rendezvous_factory(extra_args=["--max-outbox-bytes", str(outbox), "--ping-interval", "0"])
    assert server.proc is not None
    writer_doc, writer = await clients.start(server.url)
    writer_doc.add_stories({"story_id": f"{n}_seed", "stage": stages.BACKLOG, "name": "s" * 1500}
                           for n in range(1000))
    assert await writer.confirm(30)
    document = len(writer_doc.encode_update())
    await asyncio.sleep(0)
    before = vm_rss_bytes(server.proc.pid)
    stalled = await RawSocket.open(server.url)
    try:
        for round_ in range(60):
            stalled.send(protocol.encode_step1(b"\x00"))             # "send me everything"
            writer_doc.add_story(f"grow-{round_}", stage=stages.BACKLOG, name="g" * 20_000)
            await asyncio.sleep(0.01)
        assert await writer.confirm(30)
        line = await server.await_log("fell more than 4194304 bytes behind", timeout=30)
        assert "dropped client 127.0.0.1" in line
    finally:
        stalled.close()
    after = vm_rss_bytes(server.proc.pid)
    grown = len(writer_doc.encode_update()) - document
    # The bound: one outbox, the frame being written, the document's own growth (the CRDT
    # holds several times its encoded size), and a generous margin for allocator slack.
    bound = outbox + 2 * (document + grown) + 6 * grown + 48 * MIB
    assert after - before < bound, f"RSS grew {after - before} bytes (bound {bound})"
    assert _metric(_metrics(server), 'huskies_rendezvous_refused_total{reason="too_slow"}') >= 1
    await _replicates(clients, server.url, "after-stall")


def test_the_store_commits_with_synchronous_full(tmp_path: Path) -> None:
    async def pragmas(mode: str | None) -> tuple[int, str]:
        store = UpdateStore(tmp_path / f"{mode}.sqlite") if mode is None else UpdateStore(
            tmp_path / f"{mode}.sqlite", synchronous=mode)
        await store.open()
        try:
            db = store._db
            assert db is not None
            return db.execute("PRAGMA synchronous").fetchone()[0], db.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            await store.close()

    assert asyncio.run(pragmas(None)) == (2, "wal")      # 2: FULL, the default
    assert asyncio.run(pragmas("NORMAL")) == (1, "wal")
    with pytest.raises(ValueError, match="synchronous must be one of"):
        UpdateStore(tmp_path / "y.sqlite", synchronous="OFF")
