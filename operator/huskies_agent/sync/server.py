"""The rendezvous: a hub serving one pipeline document over the Yjs sync protocol.

Clients connect to ``ws://host:port/crdt-sync``. Each connection gets the same
protocol as the client side (both sides send STEP1 and answer the other's); every
update a client sends is applied to the hub's document and the resulting change is
sent to every other client. Updates are appended to an SQLite log
(:class:`~huskies_agent.sync.store.UpdateStore`) that is compacted into one
snapshot every ``compact_every`` rows, every ``compact_interval`` seconds when it
grew, and on close. A STEP2 answer is only sent once everything applied so far is
committed, so a client's confirmation means "on disk", not just "in memory".

``GET /healthz`` answers 200 ``ok``; other paths 404. With a token set, a
WebSocket request without ``Authorization: Bearer <token>`` gets 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync import protocol
from huskies_agent.sync.auth import token_problem
from huskies_agent.sync.store import UpdateStore
from huskies_agent.sync.tasks import first_to_finish

log = logging.getLogger(__name__)

SYNC_PATH = "/crdt-sync"
HEALTH_PATH = "/healthz"
#: Seconds to wait for a client's closing handshake before dropping the TCP connection.
CLOSE_TIMEOUT = 2.0


class _Overflow(Exception):
    """A client read too slowly: its outgoing queue filled up."""


class _Peer:
    """One connected client."""

    def __init__(self, ws: ServerConnection, doc: PipelineDoc, max_queued: int) -> None:
        self.ws = ws
        self.session = protocol.SyncSession(doc)
        self.name = _address(ws)
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._max_queued = max_queued
        self._overflowed = asyncio.Event()

    def send(self, frame: bytes) -> None:
        """Queue ``frame``; a client that falls ``max_queued`` frames behind is dropped."""
        if self._overflowed.is_set():
            return
        if self._outbox.qsize() >= self._max_queued:
            self._overflowed.set()
            while not self._outbox.empty():
                self._outbox.get_nowait()
            return
        self._outbox.put_nowait(frame)

    async def next_frame(self) -> bytes:
        return await self._outbox.get()

    async def watch_overflow(self) -> None:
        """Raise :class:`_Overflow` when the client falls too far behind (its writer may be stuck)."""
        await self._overflowed.wait()
        raise _Overflow


class RendezvousServer:
    """The hub. ``async with RendezvousServer(...) as server:`` serves until the block ends.

    ``db_path=None`` keeps the document in memory only. ``port=0`` picks a free
    port (read it back from :attr:`port`). ``ssl_context`` serves ``wss://``.
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 3001,
        token: str = "",
        max_size: int = 64 * 2**20,
        ping_interval: float | None = 20,
        compact_every: int = 1000,
        compact_interval: float = 60.0,
        max_queued_frames: int = 10_000,
        compression: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if compact_every < 1 or compact_interval <= 0 or max_queued_frames < 1:
            raise ValueError("compact_every, compact_interval and max_queued_frames must be positive")
        self.doc = PipelineDoc()
        self.host = host
        self._port = port
        self._db_path = Path(db_path) if db_path is not None else None
        self._token = token
        self._max_size = max_size
        self._ping_interval = ping_interval
        self._compact_every = compact_every
        self._compact_interval = compact_interval
        self._max_queued = max_queued_frames
        self._compression = compression
        self._ssl_context = ssl_context
        self._store: UpdateStore | None = None
        self._server: Server | None = None
        self._peers: set[_Peer] = set()
        #: The client whose frame is being applied, and the update it carries.
        self._origin: tuple[_Peer, bytes] | None = None
        self._compact_due = asyncio.Event()
        self._maintenance: asyncio.Task[None] | None = None
        self._remove_listener: Callable[[], None] | None = None

    # ------------------------------------------------------------------ public
    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            return self._port
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}{SYNC_PATH}"

    @property
    def clients(self) -> int:
        return len(self._peers)

    async def start(self) -> None:
        """Load the document, then listen."""
        if self._db_path is not None:
            self._store = UpdateStore(self._db_path)
            rows = await self._store.open()
            for row in rows:
                self.doc.apply_remote(row)
            log.info("loaded %d stories from %s (%d stored updates)", len(self.doc), self._db_path, len(rows))
            self._compact()
        else:
            log.warning("no database given: the document lives in memory only and is lost on exit")
        self._remove_listener = self.doc.observe_updates(self._on_update)
        self.doc.ensure_schema()
        self._server = await serve(
            self._handle,
            self.host,
            self._port,
            process_request=self._process_request,
            max_size=self._max_size,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_interval,
            compression="deflate" if self._compression else None,
            ssl=self._ssl_context,
            close_timeout=CLOSE_TIMEOUT,
        )
        if self._store is not None:
            self._maintenance = asyncio.create_task(self._maintain(), name="rendezvous-compaction")
        log.info(
            "rendezvous serving %s (auth %s, max frame %d bytes)",
            self.url, "on" if self._token else "off", self._max_size,
        )

    async def close(self) -> None:
        """Close every connection (1001 going away), compact and close the database."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if self._store is not None:
            self._compact()
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ HTTP
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path != SYNC_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found; the document is at {SYNC_PATH}\n")
        if self._token:
            problem = token_problem(request.headers.get("Authorization"), self._token)
            if problem is not None:
                log.warning("rejected a connection from %s: %s (HTTP 401)", _address(connection), problem)
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")
                response.headers["WWW-Authenticate"] = 'Bearer realm="huskies-rendezvous"'
                return response
        return None

    # ------------------------------------------------------------------ connections
    async def _handle(self, ws: ServerConnection) -> None:
        peer = _Peer(ws, self.doc, self._max_queued)
        self._peers.add(peer)
        log.info("client %s connected (%d connected)", peer.name, len(self._peers))
        reason = "closed"
        try:
            _, step1 = peer.session.step1()
            peer.send(step1)
            await first_to_finish(self._read(peer), self._write(peer), peer.watch_overflow())
        except protocol.ProtocolError as exc:
            reason = f"protocol error: {exc}"
        except _Overflow:
            reason = f"fell {self._max_queued} frames behind"
            self._peers.discard(peer)
            log.warning("dropped client %s: it fell %d frames behind", peer.name, self._max_queued)
            await _close_or_abort(ws, CloseCode.TRY_AGAIN_LATER, "too slow")
        except ConnectionClosedError as exc:
            reason = str(exc)
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                log.warning(
                    "refused a frame from %s larger than the %d-byte limit; connection closed (1009)",
                    peer.name, self._max_size,
                )
        except ConnectionClosed as exc:
            reason = str(exc)
        finally:
            self._peers.discard(peer)
            log.info("client %s disconnected: %s (%d connected)", peer.name, reason, len(self._peers))

    async def _read(self, peer: _Peer) -> None:
        while True:
            frame = await peer.ws.recv()
            try:
                message = protocol.decode(frame)
                self._origin = (peer, message.payload)
                result = peer.session.handle(message)
            except protocol.ProtocolError as exc:
                log.warning("refused a garbage frame from %s (%s); closing its connection", peer.name, exc)
                with contextlib.suppress(ConnectionClosed):
                    await peer.ws.close(CloseCode.PROTOCOL_ERROR, "protocol error")
                raise
            finally:
                self._origin = None
            if result.reply is not None:
                # Answer a STEP1 only once what was applied so far is on disk: the
                # client takes the answer as the confirmation of its earlier updates.
                if self._store is not None:
                    await self._store.durable()
                peer.send(result.reply)
            if result.synced_now:
                log.debug("client %s synced (%d stories)", peer.name, len(self.doc))

    async def _write(self, peer: _Peer) -> None:
        while True:
            await peer.ws.send(await peer.next_frame())

    def _on_update(self, update: bytes, remote: bool) -> None:
        # Runs inside pycrdt's transaction callback: queue only.
        if self._store is not None:
            self._store.append(update)
            if self._store.rows >= self._compact_every:
                self._compact_due.set()
        frame = protocol.encode_update(update)
        origin, received = self._origin or (None, b"")
        for peer in self._peers:
            # The sender already has exactly what it sent. When applying it changed
            # more (it completed updates the hub held back for missing dependencies),
            # the sender gets the change too.
            if peer is origin and update == received:
                continue
            peer.send(frame)

    # ------------------------------------------------------------------ persistence
    async def _maintain(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._compact_interval):
                    await self._compact_due.wait()
            self._compact_due.clear()
            self._compact()

    def _compact(self) -> None:
        if self._store is None or self._store.rows <= 1:
            return
        rows = self._store.rows
        snapshot = self.doc.encode_update()
        self._store.compact(snapshot)
        log.info("compacted %d stored updates into one snapshot of %d bytes", rows, len(snapshot))


async def _close_or_abort(ws: ServerConnection, code: int, reason: str) -> None:
    """Close politely if the socket still drains, else drop the TCP connection."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await ws.close(code, reason)
    except TimeoutError:
        ws.transport.abort()
    except ConnectionClosed:
        pass


def _address(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)
