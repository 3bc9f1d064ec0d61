"""RendezvousClient behaviour: failures, supervision, hooks, limits, TLS."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from tests.helpers.rendezvous import Clients, fast_client, free_port, synced_client, wait_until
from websockets.asyncio.server import ServerConnection, serve

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync import protocol
from huskies_agent.sync.client import RendezvousClient, RendezvousUnavailable
from huskies_agent.sync.server import RendezvousServer

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    """A WebSocket server running ``handler``; yields its /crdt-sync URL."""
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/crdt-sync"


def test_arguments_are_validated() -> None:
    doc = PipelineDoc()
    with pytest.raises(ValueError, match="invalid rendezvous URL"):
        RendezvousClient(doc, "http://127.0.0.1:1/crdt-sync")
    with pytest.raises(ValueError, match="wss://"):
        RendezvousClient(doc, "ws://127.0.0.1:1/crdt-sync", ssl_context=ssl.create_default_context())
    with pytest.raises(ValueError):
        RendezvousClient(doc, "ws://127.0.0.1:1/crdt-sync", reconnect_min=2, reconnect_max=1)


async def test_gives_up_after_max_failures_when_nothing_listens() -> None:
    client = fast_client(PipelineDoc(), f"ws://127.0.0.1:{free_port()}/crdt-sync", max_failures=3)
    with pytest.raises(RendezvousUnavailable, match="cannot reach the rendezvous"):
        await asyncio.wait_for(client.run(), 10)
    assert client.stats.connect_failures == 3 and client.stats.connects == 0
    assert "Connect call failed" in client.stats.last_error
    # Once run() stopped, waiting surfaces why instead of hanging.
    with pytest.raises(RendezvousUnavailable):
        await client.wait_synced(1)
    assert not await client.confirm(1)


async def test_failures_are_warnings_then_errors_after_ten(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="huskies_agent.sync.client")
    url = f"ws://127.0.0.1:{free_port()}/crdt-sync"
    client = RendezvousClient(PipelineDoc(), url, reconnect_min=0.001, reconnect_max=0.002)
    async with client:
        await wait_until(lambda: client.stats.consecutive_failures >= 12, what="12 failures")
    levels = [r.levelno for r in caplog.records if "cannot sync with the rendezvous" in r.getMessage()]
    assert levels[:9] == [logging.WARNING] * 9
    assert set(levels[9:12]) == {logging.ERROR}


async def test_confirm_and_wait_synced_time_out_without_a_server() -> None:
    client = fast_client(PipelineDoc(), f"ws://127.0.0.1:{free_port()}/crdt-sync")
    async with client:
        with pytest.raises(TimeoutError):
            await client.wait_synced(0.2)
        assert not await client.confirm(0.2)
    assert client.stats.confirm_failures == 1


async def test_a_silent_server_times_out_instead_of_hanging() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with fake_server(silent) as url, fast_client(PipelineDoc(), url) as client:
        await wait_until(lambda: client.connected)
        with pytest.raises(TimeoutError):
            await client.wait_synced(0.3)
        assert not await client.confirm(0.3)


async def test_garbage_from_the_server_drops_the_connection_and_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def garbage(ws: ServerConnection) -> None:
        await ws.send(b"\x09garbage")
        await ws.wait_closed()

    caplog.set_level(logging.ERROR, logger="huskies_agent.sync.client")
    async with fake_server(garbage) as url, fast_client(PipelineDoc(), url) as client:
        await wait_until(lambda: client.stats.connect_failures >= 2, what="two failed attempts")
        assert "protocol error" in client.stats.last_error
    assert any("unknown message type 9" in r.getMessage() for r in caplog.records)


async def test_a_server_that_drops_the_connection_is_retried() -> None:
    async def rude(ws: ServerConnection) -> None:
        await ws.close(1011, "nope")

    async with fake_server(rude) as url, fast_client(PipelineDoc(), url) as client:
        await wait_until(lambda: client.stats.connects >= 3, what="three connections")
        assert client.stats.disconnects >= 2 and "1011" in client.stats.last_error


async def test_state_hook_and_stats(memory_server: RendezvousServer) -> None:
    doc = PipelineDoc()
    client = fast_client(doc, memory_server.url)
    seen: list[bool] = []
    remove = client.on_state(seen.append)

    def broken(connected: bool) -> None:
        raise RuntimeError("hook bug")

    client.on_state(broken)  # a broken hook is logged, not fatal
    async with client:
        await client.wait_synced(5)
        assert client.connected and client.synced and seen == [True]
        doc.add_story("s1", stage=stages.CURRENT)
        assert await client.confirm(5)
        stats = client.stats
        assert stats.connects == 1 and stats.updates_sent == 1
        assert stats.bytes_out > 0 and stats.bytes_in > 0 and stats.frames_out >= 3
        assert stats.last_initial_sync_seconds is not None and stats.last_initial_sync_seconds < 5
    assert seen == [True, False] and not client.connected
    remove()
    assert memory_server.doc.story("s1") is not None


async def test_run_twice_is_refused(memory_server: RendezvousServer) -> None:
    async with fast_client(PipelineDoc(), memory_server.url) as client:
        with pytest.raises(RuntimeError, match="already running"):
            await asyncio.wait_for(client.run(), 5)
        await client.wait_synced(5)


async def test_big_documents_need_the_raised_frame_limit(memory_server: RendezvousServer, clients: Clients) -> None:
    memory_server.doc.add_stories(
        {"story_id": f"story-{i:05d}", "stage": stages.BACKLOG, "name": f"Story number {i}"} for i in range(10_000)
    )
    big_doc, _ = await clients.start(memory_server.url)  # default max_size: 64 MiB
    assert len(big_doc) == 10_000

    small = fast_client(PipelineDoc(), memory_server.url, max_size=2**20, max_failures=1)
    async with small:
        with pytest.raises(RendezvousUnavailable, match="1009"):
            await small.wait_synced(10)


async def test_local_edits_before_the_first_connection_are_sent(memory_server: RendezvousServer) -> None:
    doc = PipelineDoc()
    doc.add_story("early", stage=stages.QA)
    async with synced_client(memory_server.url, doc) as (_, client):
        assert await client.confirm(5)
    assert memory_server.doc.story("early") is not None


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
async def test_wss_with_an_ssl_context(tmp_path: Path) -> None:
    cert, key = await asyncio.to_thread(_self_signed, tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    async with RendezvousServer(None, port=0, ssl_context=server_context, token="t") as server:
        assert server.url.startswith("wss://")
        async with synced_client(server.url, ssl_context=client_context, token="t") as (doc, client):
            doc.add_story("secure", stage=stages.CURRENT)
            assert await client.confirm(5)
        assert server.doc.story("secure") is not None


def test_protocol_errors_are_value_errors() -> None:
    assert issubclass(protocol.ProtocolError, ValueError)
