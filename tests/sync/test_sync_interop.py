"""Interoperability with independent implementations of the Yjs sync protocol.

* pycrdt-websocket's ``WebsocketServer`` (Python, in process) as the rendezvous;
* the Node stack: ``@y/websocket-server`` as the rendezvous, and a Node
  ``y-websocket`` client talking to our server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pycrdt.websocket import WebsocketServer
from tests.helpers import ynode
from tests.helpers.rendezvous import Clients, free_port, synced_client, wait_until
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from huskies_agent.pipeline import stages
from huskies_agent.sync.server import RendezvousServer

PEER_SCRIPT = Path(__file__).with_name("ynode_peer.cjs")


class _WebsocketsChannel:
    """pycrdt's Channel protocol over a ``websockets`` server connection."""

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws

    @property
    def path(self) -> str:
        return self._ws.request.path.partition("?")[0] if self._ws.request else "/"

    def __aiter__(self) -> _WebsocketsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._ws.send(message)

    async def recv(self) -> bytes:
        message = await self._ws.recv()
        return message.encode() if isinstance(message, str) else message


@pytest.fixture
async def pycrdt_server() -> AsyncIterator[str]:
    """pycrdt-websocket serving rooms by path; yields the /crdt-sync URL.

    The server lives in a task of its own: anyio's task groups must be entered and
    left by the same task, which a fixture's setup and teardown are not.
    """
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def host() -> None:
        async with WebsocketServer(auto_clean_rooms=False) as rooms:

            async def handler(ws: ServerConnection) -> None:
                await rooms.serve(_WebsocketsChannel(ws))

            async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                url.set_result(f"ws://127.0.0.1:{port}/crdt-sync")
                await stop.wait()

    task = asyncio.create_task(host())
    try:
        yield await asyncio.wait_for(url, 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_sync_through_pycrdt_websocket(pycrdt_server: str, clients: Clients) -> None:
    a_doc, a = await clients.start(pycrdt_server)
    b_doc, b = await clients.start(pycrdt_server)
    a_doc.add_story("py1", stage=stages.CURRENT, name="via pycrdt-websocket", depends_on=["x"])
    assert await a.confirm(5)
    await wait_until(lambda: b_doc.story("py1") is not None, what="py1 at b")
    b_doc.claim("py1", "node-b", 12.5)
    assert await b.confirm(5)
    await wait_until(lambda: getattr(a_doc.story("py1"), "claimed_by", "") == "node-b", what="claim at a")
    # A late joiner gets everything from the room, including what was confirmed.
    async with synced_client(pycrdt_server) as (c_doc, _):
        assert dict(c_doc.stories) == dict(a_doc.stories) == dict(b_doc.stories)


# ---------------------------------------------------------------------- Node
@pytest.fixture(scope="module")
def node_modules() -> Path:
    missing = ynode.node_missing()
    if missing is not None:
        pytest.skip(f"Node interop needs node and npm: {missing}")
    return ynode.ensure_node_modules()


@pytest.fixture
def node_server(node_modules: Path, tmp_path: Path) -> Iterator[str]:
    """``@y/websocket-server`` 0.1.1 (Yjs 13); yields the /crdt-sync URL."""
    port = free_port()
    proc = ynode.start_node_server(node_modules, port, tmp_path / "node-server.log")
    try:
        yield f"ws://127.0.0.1:{port}/crdt-sync"
    finally:
        ynode.stop(proc)


async def test_sync_through_the_node_server(node_server: str, clients: Clients) -> None:
    a_doc, a = await clients.start(node_server)
    b_doc, b = await clients.start(node_server)
    a_doc.add_story("js1", stage=stages.CURRENT, name="via y-websocket-server")
    assert await a.confirm(5)
    await wait_until(lambda: b_doc.story("js1") is not None, what="js1 at b")
    b_doc.move("js1", stages.QA)
    b_doc.set_blocked("js1", True)
    assert await b.confirm(5)
    await wait_until(lambda: dict(a_doc.stories) == dict(b_doc.stories), what="a == b")
    story = a_doc.story("js1")
    assert story is not None and story.stage == stages.QA and story.blocked


async def test_a_node_client_syncs_with_our_server(node_modules: Path, clients: Clients) -> None:
    async with RendezvousServer(None, port=0) as server:
        doc, client = await clients.start(server.url)
        base_url = server.url.removesuffix("/crdt-sync")
        peer = await asyncio.create_subprocess_exec(
            "node", str(PEER_SCRIPT), base_url, "crdt-sync", "from-node", "from-python",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"NODE_PATH": str(node_modules), "PATH": _path()},
        )
        try:
            await wait_until(lambda: doc.story("from-node") is not None, timeout=20, what="the Node peer's story")
            doc.add_story("from-python", stage=stages.MERGE, name="written by python")
            stdout, stderr = await asyncio.wait_for(peer.communicate(), 20)
        finally:
            if peer.returncode is None:
                peer.kill()
                await peer.wait()
        assert peer.returncode == 0, (stdout, stderr)
        saw = json.loads(stdout.decode().strip().splitlines()[-1])["saw"]
        assert saw["stage"] == stages.MERGE and saw["name"] == "written by python"
        story = doc.story("from-node")
        assert story is not None
        assert (story.stage, story.retry_count, story.depends_on) == (stages.QA, 2, ("a", "b"))
        assert (story.claimed_by, story.epoch) == ("node-js", 4)
        assert server.doc.story("from-node") == story
        assert await client.confirm(5)


def _path() -> str:
    import os

    return os.environ.get("PATH", "/usr/bin:/bin")
