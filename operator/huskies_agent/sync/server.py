"""The rendezvous: a hub serving one pipeline document over the Yjs sync protocol.

Clients connect to ``ws://host:port/crdt-sync``. Each connection gets the same
protocol as the client side (both sides send STEP1 and answer the other's); every
update a client sends is applied to the hub's document and the resulting change is
sent to every other client. Updates are appended to an SQLite log
(:class:`~huskies_agent.sync.store.UpdateStore`) that is compacted into one
snapshot every ``compact_every`` rows, every ``compact_interval`` seconds when it
grew, and on close. A STEP2 answer is only sent once everything applied so far is
committed, so a client's confirmation means "on disk", not just "in memory".

Every client is held to :class:`~huskies_agent.sync.limits.ServerLimits` (document
and update size, outbox bytes, write rate, connections, value depth); each refusal
is logged with its reason, counted in ``huskies_rendezvous_refused_total`` and told
to the client as a close code (1008 policy, 1009 too big, 1013 try again later).

``GET /healthz`` answers 200 ``ok``, ``GET /metrics`` the Prometheus metrics; other
paths 404. With a token set, a WebSocket request without ``Authorization: Bearer
<token>`` gets 401.
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
from huskies_agent.sync.limits import Refusal, ServerLimits, TokenBucket, document_refusal
from huskies_agent.sync.peer import Overflow, Peer
from huskies_agent.sync.server_metrics import RendezvousMetrics
from huskies_agent.sync.store import UpdateStore
from huskies_agent.sync.tasks import first_to_finish
from huskies_agent.sync.updates import update_problem

log = logging.getLogger(__name__)

SYNC_PATH = "/crdt-sync"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
#: Seconds to wait for a client's closing handshake before dropping the TCP connection.
CLOSE_TIMEOUT = 2.0


class _Refused(Exception):
    """A client's write or connection that the limits refuse: close with ``code``."""

    def __init__(self, refusal: Refusal, code: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.refusal = refusal
        self.code = code
        #: Sent in the close frame (at most 123 bytes).
        self.reason = reason[:120]


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
        limits: ServerLimits | None = None,
        synchronous: str = "FULL",
        compression: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if compact_every < 1 or compact_interval <= 0:
            raise ValueError("compact_every and compact_interval must be positive")
        self.limits = limits if limits is not None else ServerLimits()
        problem = self.limits.problem(max_size)
        if problem is not None:
            raise ValueError(problem)
        self.doc = PipelineDoc()
        self.metrics = RendezvousMetrics()
        self.metrics.track(
            lambda: float(sum(peer.pending_bytes for peer in self._peers)),
            lambda: float(len(self.doc.malformed)),
        )
        #: Upper estimate of the encoded document (exact after each compaction).
        self._doc_bytes = 0
        self.host = host
        self._port = port
        self._db_path = Path(db_path) if db_path is not None else None
        self._synchronous = synchronous
        self._token = token
        self._max_size = max_size
        self._ping_interval = ping_interval
        self._compact_every = compact_every
        self._compact_interval = compact_interval
        self._compression = compression
        self._ssl_context = ssl_context
        self._store: UpdateStore | None = None
        self._server: Server | None = None
        self._peers: set[Peer] = set()
        #: The client whose frame is being applied, and the update it carries.
        self._origin: tuple[Peer, bytes] | None = None
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
            self._store = UpdateStore(self._db_path, synchronous=self._synchronous)
            rows = await self._store.open()
            for index, row in enumerate(rows):
                self._load_row(index, row)
            log.info("loaded %d stories from %s (%d stored updates)", len(self.doc), self._db_path, len(rows))
            self._compact()
        else:
            log.warning("no database given: the document lives in memory only and is lost on exit")
        self._remove_listener = self.doc.observe_updates(self._on_update)
        self.doc.ensure_schema()
        self._set_doc_bytes(len(self.doc.encode_update()))
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
        lim = self.limits
        log.info(
            "rendezvous serving %s (auth %s, max frame %d bytes, document %d bytes, update %d bytes, "
            "outbox %d bytes per client, %g writes/s (burst %d), %d connections, value depth %d)",
            self.url, "on" if self._token else "off", self._max_size, lim.max_document_bytes,
            lim.max_update_bytes, lim.max_outbox_bytes, lim.max_writes_per_second, lim.write_burst,
            lim.max_connections, lim.max_value_depth,
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
        if path == METRICS_PATH:
            response = connection.respond(HTTPStatus.OK, self.metrics.render().decode())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        if path != SYNC_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"not found; the document is at {SYNC_PATH}\n")
        if self._token:
            problem = token_problem(request.headers.get("Authorization"), self._token)
            if problem is not None:
                log.warning("rejected a connection from %s: %s (HTTP 401)", _address(connection), problem)
                response = connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")
                response.headers["WWW-Authenticate"] = 'Bearer realm="huskies-rendezvous"'
                return response
        if len(self._peers) >= self.limits.max_connections:
            self.metrics.refused.labels(Refusal.TOO_MANY_CONNECTIONS.value).inc()
            log.warning(
                "refused a connection from %s: %d clients connected, the limit (HTTP 503)",
                _address(connection), len(self._peers),
            )
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None

    # ------------------------------------------------------------------ connections
    async def _handle(self, ws: ServerConnection) -> None:
        session = protocol.SyncSession(self.doc, max_value_depth=self.limits.max_value_depth)
        peer = Peer(ws, session, _address(ws), self.limits.max_outbox_bytes)
        if len(self._peers) >= self.limits.max_connections:
            # Handshakes that passed the HTTP check together can still overshoot.
            self.metrics.refused.labels(Refusal.TOO_MANY_CONNECTIONS.value).inc()
            log.warning("refused client %s: %d clients connected, the limit (1013)", peer.name, len(self._peers))
            await _close_or_abort(ws, CloseCode.TRY_AGAIN_LATER, "too many connections")
            return
        self._peers.add(peer)
        self.metrics.clients.set(len(self._peers))
        log.info("client %s connected (%d connected)", peer.name, len(self._peers))
        reason = "closed"
        try:
            _, step1 = peer.session.step1()
            peer.send(step1)
            await first_to_finish(self._read(peer), peer.write_loop(), peer.watch_overflow())
        except _Refused as exc:
            reason = f"refused: {exc}"
            self._peers.discard(peer)
            self.metrics.refused.labels(exc.refusal.value).inc()
            log.warning("refused a write from %s: %s; connection closed (%d)", peer.name, exc, exc.code)
            await _close_or_abort(ws, exc.code, exc.reason)
        except protocol.ProtocolError as exc:
            reason = f"protocol error: {exc}"
        except Overflow:
            reason = f"fell more than {self.limits.max_outbox_bytes} bytes behind"
            self._peers.discard(peer)
            self.metrics.refused.labels(Refusal.TOO_SLOW.value).inc()
            log.warning(
                "dropped client %s: it fell more than %d bytes behind (1013)",
                peer.name, self.limits.max_outbox_bytes,
            )
            await _close_or_abort(ws, CloseCode.TRY_AGAIN_LATER, "too slow")
        except ConnectionClosedError as exc:
            reason = str(exc)
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                self.metrics.refused.labels(Refusal.UPDATE_TOO_LARGE.value).inc()
                log.warning(
                    "refused a frame from %s larger than the %d-byte limit; connection closed (1009)",
                    peer.name, self._max_size,
                )
        except ConnectionClosed as exc:
            reason = str(exc)
        finally:
            self._peers.discard(peer)
            self.metrics.clients.set(len(self._peers))
            log.info("client %s disconnected: %s (%d connected)", peer.name, reason, len(self._peers))

    async def _read(self, peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(self.limits.max_writes_per_second, self.limits.write_burst, loop.time())
        while True:
            frame = await peer.ws.recv()
            try:
                message = protocol.decode(frame)
                if message.kind in (protocol.Kind.UPDATE, protocol.Kind.STEP2):
                    await self._admit_write(peer, message, bucket)
                self._origin = (peer, message.payload)
                result = peer.session.handle(message)
            except protocol.RefusedUpdate as exc:
                raise _Refused(Refusal.VALUE_TOO_DEEP, CloseCode.POLICY_VIOLATION, str(exc), str(exc)) from None
            except protocol.ProtocolError as exc:
                self.metrics.refused.labels(Refusal.INVALID.value).inc()
                log.warning("refused a garbage frame from %s (%s); closing its connection", peer.name, exc)
                with contextlib.suppress(ConnectionClosed):
                    await peer.ws.close(CloseCode.PROTOCOL_ERROR, "protocol error")
                raise
            finally:
                self._origin = None
            if result.applied:
                self.metrics.updates.inc()
            if result.reply is not None:
                # Answer a STEP1 only once what was applied so far is on disk: the
                # client takes the answer as the confirmation of its earlier updates.
                if self._store is not None:
                    await self._store.durable()
                peer.send(result.reply)
            if result.synced_now:
                log.debug("client %s synced (%d stories)", peer.name, len(self.doc))

    async def _admit_write(self, peer: Peer, message: protocol.Message, bucket: TokenBucket) -> None:
        """Refuse (raise :class:`_Refused`) or delay a client's update before anything applies it."""
        size = len(message.payload)
        if message.payload == protocol.EMPTY_UPDATE:
            return
        limits = self.limits
        if message.kind is protocol.Kind.UPDATE and size > limits.max_update_bytes:
            detail = f"an update of {size} bytes exceeds the {limits.max_update_bytes}-byte limit"
            raise _Refused(Refusal.UPDATE_TOO_LARGE, CloseCode.MESSAGE_TOO_BIG, detail, detail)
        refusal = document_refusal(self._doc_bytes, size, limits.max_document_bytes)
        if refusal is not None:
            # The estimate only grows between compactions: measure before refusing.
            self._set_doc_bytes(len(self.doc.encode_update()))
            refusal = document_refusal(self._doc_bytes, size, limits.max_document_bytes)
        if refusal is not None:
            raise _Refused(
                Refusal.DOCUMENT_TOO_LARGE, CloseCode.POLICY_VIOLATION,
                f"document limit of {limits.max_document_bytes} bytes reached; write refused", refusal,
            )
        wait = bucket.take(asyncio.get_running_loop().time())
        if wait > 0:
            peer.throttled += 1
            self.metrics.throttled.inc()
            if peer.throttled == 1:
                log.warning(
                    "client %s writes faster than %g updates/s; its writes are slowed down",
                    peer.name, limits.max_writes_per_second,
                )
            await asyncio.sleep(wait)

    def _on_update(self, update: bytes, remote: bool) -> None:
        # Runs inside pycrdt's transaction callback: queue only.
        self._set_doc_bytes(self._doc_bytes + len(update))
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
        self._set_doc_bytes(len(snapshot))
        self._store.compact(snapshot)
        log.info("compacted %d stored updates into one snapshot of %d bytes", rows, len(snapshot))


    def _set_doc_bytes(self, size: int) -> None:
        self._doc_bytes = size
        self.metrics.document_bytes.set(size)

    def _load_row(self, index: int, row: bytes) -> None:
        """Apply one stored update; a row this build must not apply is skipped, not fatal."""
        problem = update_problem(row, max_depth=self.limits.max_value_depth)
        if problem is None:
            try:
                self.doc.apply_remote(row)
                return
            except ValueError as exc:
                problem = f"invalid update: {exc}"
        self.metrics.skipped_rows.inc()
        log.error("skipped stored update #%d of %s (%d bytes): %s", index, self._db_path, len(row), problem)


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
