"""What the rendezvous refuses — garbage, oversized frames, wrong tokens — while serving the rest."""

from __future__ import annotations

import http.client
from collections.abc import Callable

import pytest
from tests.helpers.rendezvous import Clients, RendezvousProcess, wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync import protocol
from huskies_agent.sync.client import RendezvousClient, RendezvousUnavailable


def _get(server: RendezvousProcess, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


async def _still_serving(clients: Clients, url: str, story_id: str, token: str = "") -> None:
    """Two clients still replicate through the server."""
    a_doc, a = await clients.start(url, token=token)
    b_doc, _ = await clients.start(url, token=token)
    a_doc.add_story(story_id, stage=stages.CURRENT)
    assert await a.confirm(5)
    await wait_until(lambda: b_doc.story(story_id) is not None, what=f"{story_id} at b")


def test_health_and_unknown_paths(rendezvous: RendezvousProcess) -> None:
    assert _get(rendezvous, "/healthz") == (200, "ok\n")
    status, body = _get(rendezvous, "/somewhere")
    assert status == 404 and "/crdt-sync" in body
    assert _get(rendezvous, "/crdt-sync")[0] == 426  # a plain GET is not a WebSocket upgrade


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xff\xfe not the protocol", "unknown message type"),
        ("a text frame", "text frame"),
        (b"\x00\x02\x05ab", "runs past the end"),
        (protocol.encode_update(b"\x01"), "invalid update"),
        (protocol.encode_step1(b"not a state vector"), "invalid state vector"),
    ],
)
async def test_garbage_frames_close_only_that_connection(
    rendezvous: RendezvousProcess, clients: Clients, frame: bytes | str, reason: str
) -> None:
    a_doc, a = await clients.start(rendezvous.url)
    async with connect(rendezvous.url) as raw:
        await raw.send(frame)
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                await raw.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002
    line = await rendezvous.await_log("refused a garbage frame")
    assert reason in line
    # The client that was already there, and new ones, are unaffected.
    assert a.connected and a.stats.disconnects == 0
    await _still_serving(clients, rendezvous.url, "after-garbage")
    await wait_until(lambda: a_doc.story("after-garbage") is not None)


async def test_oversized_frames_are_refused(
    rendezvous_factory: Callable[..., RendezvousProcess], clients: Clients
) -> None:
    server = rendezvous_factory(max_size=4096)
    async with connect(server.url, max_size=None) as raw:
        await raw.send(protocol.encode_update(bytes(10_000)))
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                await raw.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    line = await server.await_log("larger than the 4096-byte limit")
    assert "connection closed (1009)" in line
    await _still_serving(clients, server.url, "after-oversized")


async def test_tokens_are_checked(rendezvous_factory: Callable[..., RendezvousProcess], clients: Clients) -> None:
    server = rendezvous_factory(token="s3cret")
    for token, problem in (("wrong", "wrong bearer token"), ("", "missing bearer token")):
        client = RendezvousClient(PipelineDoc(), server.url, token=token, max_failures=1)
        async with client:
            with pytest.raises(RendezvousUnavailable, match="HTTP 401"):
                await client.wait_synced(10)
        assert client.stats.connect_failures == 1 and not client.connected
        assert "rejected a connection from 127.0.0.1" in await server.await_log(problem)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.url, additional_headers={"Authorization": "Basic czNjcmV0"}):
            pass
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    await _still_serving(clients, server.url, "with-token", token="s3cret")
