"""The rendezvous client: keeps a :class:`PipelineDoc` in sync with a rendezvous peer.

One connection at a time, reconnecting forever with jittered exponential backoff.
On every connection both sides send a STEP1 and answer the other's, so edits made
while offline flow both ways; afterwards each local transaction goes out as one
UPDATE message and each received update is applied with origin ``REMOTE_ORIGIN``
(so it is not echoed back).

Confirmation (:meth:`RendezvousClient.confirm`) rides on the sync protocol: a STEP1
is queued behind every local update already queued, and the peer — which handles
a connection's messages in order — answers it with a STEP2 only after it applied
them. Updates made before the connection existed reach the peer in our answer to
its STEP1, so a confirmation waits until that answer is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.frames import CloseCode
from websockets.uri import parse_uri

from huskies_agent.backoff import reconnect_delay
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync import protocol
from huskies_agent.sync.auth import bearer_header
from huskies_agent.sync.stats import SyncStats
from huskies_agent.sync.tasks import first_to_finish

log = logging.getLogger(__name__)

#: From this many failed attempts in a row on, each failure is logged as an error.
ERROR_AFTER_FAILURES = 10
#: Updates at least this large are checked in a worker thread (see ``_read``).
THREADED_CHECK_BYTES = 1 << 20
#: Seconds to wait for the closing handshake when a connection ends.
CLOSE_TIMEOUT = 2.0

StateCallback = Callable[[bool], None]

_EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    WebSocketException,
    protocol.ProtocolError,
)


class RendezvousUnavailable(ConnectionError):
    """The client gave up: ``max_failures`` connection attempts failed in a row."""


class _Signal:
    """Wakes every waiter whenever the client's state changes."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class _Outcome:
    """What one connection attempt achieved."""

    synced = False


class _Link:
    """One live connection: its protocol session, outgoing queue and pending confirmations."""

    def __init__(self, ws: ClientConnection, doc: PipelineDoc, started: float) -> None:
        self.ws = ws
        self.session = protocol.SyncSession(doc)
        self.started = started
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._confirmations: dict[int, asyncio.Future[bool]] = {}

    def send(self, frame: bytes) -> None:
        self.outbox.put_nowait(frame)

    def send_step1(self) -> int:
        ticket, frame = self.session.step1()
        self.send(frame)
        return ticket

    def request_confirmation(self) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._confirmations[self.send_step1()] = future
        return future

    def answered(self, ticket: int) -> None:
        future = self._confirmations.pop(ticket, None)
        if future is not None and not future.done():
            future.set_result(True)

    def fail_confirmations(self) -> None:
        for future in self._confirmations.values():
            if not future.done():
                future.set_result(False)
        self._confirmations.clear()


class RendezvousClient:
    """Replicates ``doc`` with the rendezvous at ``url`` (``ws://host:port/crdt-sync``).

    Run it with ``await client.run()`` in a task (cancel the task to stop) or with
    ``async with RendezvousClient(...) as client:``, which runs it in the background.

    ``max_failures`` (not set: retry forever) makes :meth:`run` raise
    :class:`RendezvousUnavailable` after that many failed attempts in a row; one-shot
    tools use it to fail fast. ``compression`` negotiates permessage-deflate.
    """

    def __init__(
        self,
        doc: PipelineDoc,
        url: str,
        *,
        token: str = "",
        max_size: int = 64 * 2**20,
        reconnect_min: float = 1.0,
        reconnect_max: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        ping_interval: float | None = 20,
        open_timeout: float = 10.0,
        max_failures: int | None = None,
        compression: bool = True,
    ) -> None:
        try:
            parsed = parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(f"invalid rendezvous URL: {exc}") from None
        if ssl_context is not None and not parsed.secure:
            raise ValueError(f"an SSL context needs a wss:// URL, got {url!r}")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if max_failures is not None and max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self.doc = doc
        self.url = url
        self.stats = SyncStats()
        self._token = token
        self._max_size = max_size
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._ssl_context = ssl_context
        self._ping_interval = ping_interval
        self._open_timeout = open_timeout
        self._max_failures = max_failures
        self._compression = compression
        self._link: _Link | None = None
        self._state_callbacks: list[StateCallback] = []
        self._changed = _Signal()
        self._running = False
        self._stopped_by: BaseException | None = None
        self._background: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        """A connection to the rendezvous is open."""
        return self._link is not None

    @property
    def synced(self) -> bool:
        """The current connection finished its initial sync."""
        link = self._link
        return link is not None and link.session.synced and not self.doc.catching_up

    def on_state(self, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(connected)`` when a connection opens or ends; returns a remover."""
        self._state_callbacks.append(callback)

        def remove() -> None:
            if callback in self._state_callbacks:
                self._state_callbacks.remove(callback)

        return remove

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Return once the current connection's initial sync is done.

        Raises :class:`TimeoutError` after ``timeout`` seconds, and the reason
        :meth:`run` stopped (e.g. :class:`RendezvousUnavailable`) if it has.
        """
        async with asyncio.timeout(timeout):
            while not self.synced:
                self._raise_if_stopped()
                await self._wait_change()

    async def confirm(self, timeout: float) -> bool:
        """True once the rendezvous holds every local update made before this call.

        Waits (within ``timeout``) for a connection if there is none. Returns False
        when ``timeout`` passes or the connection carrying the confirmation ends
        before the answer arrives. When it returns True, this replica also holds
        everything the rendezvous had at that moment.
        """
        self.stats.confirms += 1
        confirmed = False
        try:
            async with asyncio.timeout(timeout):
                link = await self._ready_link()
                if link is not None:
                    confirmed = await link.request_confirmation()
        except TimeoutError:
            confirmed = False
        if not confirmed:
            self.stats.confirm_failures += 1
        return confirmed

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        """Connect and sync until cancelled, reconnecting after every failure."""
        if self._running:
            raise RuntimeError("RendezvousClient.run() is already running")
        self._running = True
        self._stopped_by = None
        remove_listener = self.doc.observe_updates(self._on_local_update)
        self.doc.defer_bulk = True  # _read awaits catch_up(): the loop runs between slices
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                reason, synced = await self._connect_once(loop.time())
                failures = 1 if synced else failures + 1
                if not synced:
                    self.stats.connect_failures += 1
                    self.stats.consecutive_failures += 1
                self.stats.last_error = reason
                if self._max_failures is not None and self.stats.consecutive_failures >= self._max_failures:
                    raise RendezvousUnavailable(f"cannot reach the rendezvous at {self.url}: {reason}")
                delay = reconnect_delay(failures, self._reconnect_min, self._reconnect_max)
                if synced:
                    log.warning(
                        "lost the rendezvous %s (%s); reconnecting in %.1f s", self.url, reason, delay
                    )
                else:
                    attempts = self.stats.consecutive_failures
                    level = logging.ERROR if attempts >= ERROR_AFTER_FAILURES else logging.WARNING
                    log.log(
                        level,
                        "cannot sync with the rendezvous %s (%s); %d failed attempt(s) in a row, "
                        "retrying in %.1f s",
                        self.url, reason, attempts, delay,
                    )
                await asyncio.sleep(delay)
        except BaseException as exc:
            self._stopped_by = exc
            raise
        finally:
            remove_listener()
            self.doc.defer_bulk = False
            self._running = False
            self._changed.notify()

    async def __aenter__(self) -> Self:
        self._background = asyncio.create_task(self.run(), name=f"rendezvous-client {self.url}")
        await asyncio.sleep(0)  # let run() start, so it owns the client from here on
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._background = self._background, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------------ internals
    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "additional_headers": bearer_header(self._token),
            "max_size": self._max_size,
            "ping_interval": self._ping_interval,
            "ping_timeout": self._ping_interval,
            "open_timeout": self._open_timeout,
            "close_timeout": CLOSE_TIMEOUT,
            "compression": "deflate" if self._compression else None,
        }
        if self._ssl_context is not None:
            kwargs["ssl"] = self._ssl_context
        return kwargs

    async def _connect_once(self, started: float) -> tuple[str, bool]:
        """One connection attempt, served until it ends: why it ended, and whether it synced."""
        outcome = _Outcome()
        try:
            async with connect(self.url, **self._connect_kwargs()) as ws:
                await self._serve(ws, started, outcome)
        except _EXPECTED_FAILURES as exc:
            return _describe(exc), outcome.synced
        except Exception as exc:  # a bug must not end replication; log it and reconnect
            log.exception("rendezvous connection failed unexpectedly")
            return _describe(exc), outcome.synced
        return "connection closed", outcome.synced

    async def _serve(self, ws: ClientConnection, started: float, outcome: _Outcome) -> None:
        link = _Link(ws, self.doc, started)
        self._link = link
        self.stats.connects += 1
        log.info("connected to the rendezvous %s", self.url)
        self._emit_state(True)
        self._changed.notify()
        try:
            link.send_step1()
            await first_to_finish(self._read(link), self._write(link))
        except asyncio.CancelledError:
            # Stopping: say goodbye properly instead of the 1011 of an aborted block.
            with contextlib.suppress(Exception):
                await ws.close(CloseCode.GOING_AWAY, "client stopping")
            raise
        finally:
            outcome.synced = link.session.synced
            self._link = None
            link.fail_confirmations()
            self.stats.disconnects += 1
            self._emit_state(False)
            self._changed.notify()

    async def _read(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame = await link.ws.recv()
            self.stats.frames_in += 1
            self.stats.bytes_in += len(frame)
            try:
                message = protocol.decode(frame)
                checked = len(message.payload) >= THREADED_CHECK_BYTES
                if checked:
                    # An initial sync of 100,000 stories takes the update scanner ~3 s of CPU: in a
                    # thread, so that the event loop (and the Lease renewal) runs meanwhile.
                    await asyncio.to_thread(link.session.check, message)
                result = link.session.handle(message, checked=checked)
            except protocol.ProtocolError as exc:
                log.error("closing the connection to %s: %s", self.url, exc)
                await link.ws.close(CloseCode.PROTOCOL_ERROR, "protocol error")
                raise
            if self.doc.catching_up:
                await self.doc.catch_up()  # a bulk update (an initial sync): its stories, in slices
            if result.reply is not None:
                link.send(result.reply)
                self._changed.notify()
            if result.applied:
                self.stats.updates_received += 1
            if result.synced_now:
                elapsed = loop.time() - link.started
                self.stats.last_initial_sync_seconds = elapsed
                self.stats.consecutive_failures = 0
                log.info(
                    "synced with the rendezvous %s in %.0f ms (%d stories)",
                    self.url, elapsed * 1000, len(self.doc),
                )
                self._changed.notify()
            if result.answered is not None:
                link.answered(result.answered)
            if result.message.kind is protocol.Kind.AUTH:
                log.warning(
                    "the rendezvous %s denied permission: %s",
                    self.url, result.message.payload.decode("utf-8", "replace"),
                )

    async def _write(self, link: _Link) -> None:
        while True:
            frame = await link.outbox.get()
            await link.ws.send(frame)
            self.stats.frames_out += 1
            self.stats.bytes_out += len(frame)

    def _on_local_update(self, update: bytes, remote: bool) -> None:
        # Runs inside pycrdt's transaction callback: only queue the frame.
        if remote:
            return
        link = self._link
        if link is not None:
            link.send(link.session.update(update))
            self.stats.updates_sent += 1

    async def _ready_link(self) -> _Link | None:
        """The current connection once it answered the peer's STEP1 (None if run() stopped)."""
        while True:
            link = self._link
            if link is not None and link.session.answered_peer:
                return link
            if self._stopped_by is not None:
                return None
            await self._wait_change()

    def _raise_if_stopped(self) -> None:
        stopped = self._stopped_by
        if stopped is None:
            return
        if isinstance(stopped, Exception):
            raise stopped
        raise ConnectionError(f"the rendezvous client for {self.url} was stopped")

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _emit_state(self, connected: bool) -> None:
        for callback in list(self._state_callbacks):
            try:
                callback(connected)
            except Exception:
                log.exception("rendezvous state callback failed")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        hint = " (missing or wrong token)" if status in (401, 403) else ""
        return f"HTTP {status}{hint}"
    if isinstance(exc, ConnectionClosed):
        return f"connection closed: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, protocol.ProtocolError):
        return f"protocol error: {exc}"
    return str(exc) or type(exc).__name__
