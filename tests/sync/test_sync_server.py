"""The hub in process: what it sends to whom, and how it treats slow clients."""

from __future__ import annotations

import asyncio
import logging

import pytest
from tests.helpers.rendezvous import Clients, wait_until
from websockets.asyncio.client import ClientConnection, connect

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync import protocol
from huskies_agent.sync.limits import ServerLimits
from huskies_agent.sync.protocol import Kind
from huskies_agent.sync.server import RendezvousServer


async def _raw_peer(url: str) -> ClientConnection:
    """A bare connection that answered the hub's STEP1 with nothing."""
    ws = await connect(url)
    first = protocol.decode(await ws.recv())
    assert first.kind is Kind.STEP1
    await ws.send(protocol.encode_step2(protocol.EMPTY_UPDATE))
    return ws


async def _next_update(ws: ClientConnection, timeout: float = 5) -> bytes | None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = protocol.decode(await ws.recv())
                if message.kind is Kind.UPDATE:
                    return message.payload
    except TimeoutError:
        return None


async def test_updates_go_to_the_others_not_back_to_the_sender(memory_server: RendezvousServer) -> None:
    author = PipelineDoc()
    author.apply_remote(memory_server.doc.encode_update())  # knows the hub's schema entry
    updates: list[bytes] = []
    author.observe_updates(lambda update, remote: updates.append(update))
    author.add_story("s1", stage=stages.CURRENT)
    sender, other = await _raw_peer(memory_server.url), await _raw_peer(memory_server.url)
    try:
        await sender.send(protocol.encode_update(updates[-1]))
        relayed = await _next_update(other)
        assert relayed is not None
        replica = PipelineDoc()
        replica.apply_remote(relayed)
        assert replica.story("s1") is not None
        assert await _next_update(sender, timeout=0.3) is None
    finally:
        await sender.close()
        await other.close()


async def test_updates_completed_later_reach_their_sender_too(memory_server: RendezvousServer) -> None:
    # u2 depends on u1: the hub holds u2 back until u1 arrives from another client.
    author = PipelineDoc()
    updates: list[bytes] = []
    author.observe_updates(lambda update, remote: updates.append(update))
    author.add_story("s1", stage=stages.CURRENT)
    author.move("s1", stages.QA)
    u1, u2 = updates
    early, late = await _raw_peer(memory_server.url), await _raw_peer(memory_server.url)
    try:
        await early.send(protocol.encode_update(u2))
        await asyncio.sleep(0.2)
        assert memory_server.doc.story("s1") is None
        await late.send(protocol.encode_update(u1))
        await wait_until(lambda: memory_server.doc.story("s1") is not None)
        # The late sender had only u1; the hub's combined change brings it u2 as well.
        replica = PipelineDoc()
        replica.apply_remote(u1)
        payload = await _next_update(late)
        assert payload is not None
        replica.apply_remote(payload)
        story = replica.story("s1")
        assert story is not None and story.stage == stages.QA
    finally:
        await early.close()
        await late.close()


async def _stalled_connection(url: str) -> asyncio.StreamWriter:
    """A WebSocket handshake over a raw socket that then never reads (TCP back-pressure)."""
    host_port = url.removeprefix("ws://").split("/", 1)[0]
    host, port = host_port.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /crdt-sync HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    return writer


async def test_a_client_that_stops_reading_is_dropped(clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="huskies_agent.sync.server")
    limits = ServerLimits(max_outbox_bytes=400_000, max_writes_per_second=1e6)
    async with RendezvousServer(None, port=0, limits=limits, compression=False) as server:
        server.doc.add_story("big", stage=stages.CURRENT)
        reader_doc, _ = await clients.start(server.url)
        stalled = await _stalled_connection(server.url)
        try:
            await wait_until(lambda: server.clients == 2)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            index = 0
            while server.clients > 1 and loop.time() < deadline:
                index += 1
                server.doc.put_raw("big", name=f"{index:08d}" + "x" * 20_000)
                await asyncio.sleep(0.001)
            assert server.clients == 1, "the stalled client was not dropped"
        finally:
            stalled.close()
        assert any("fell more than 400000 bytes behind" in r.getMessage() for r in caplog.records)
        # The well-behaved client kept up and has the last value.
        await wait_until(lambda: getattr(reader_doc.story("big"), "name", "").startswith(f"{index:08d}"))
