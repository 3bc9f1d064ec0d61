"""One client of the rendezvous and its outbox, bounded in bytes."""

from __future__ import annotations

import asyncio
from collections import deque

from websockets.asyncio.server import ServerConnection

from huskies_agent.sync import protocol


class Overflow(Exception):
    """A client read too slowly: what is queued for it passed the outbox limit."""


class Peer:
    """One connected client: its protocol session and the frames waiting to be written to it.

    The outbox is bounded in bytes (``max_outbox_bytes``), counting the frames queued behind
    the oldest one (the frame being written, or the next): a frame that would pass the bound
    drops the client (the queue is freed at once). The oldest frame is not counted, so a
    document larger than the bound can be synced while the others keep writing.
    """

    def __init__(
        self, ws: ServerConnection, session: protocol.SyncSession, name: str, max_outbox_bytes: int
    ) -> None:
        self.ws = ws
        self.session = session
        self.name = name
        self.max_outbox_bytes = max_outbox_bytes
        self._outbox: deque[bytes] = deque()
        self._pending = 0
        self._ready = asyncio.Event()
        self._overflowed = asyncio.Event()
        #: Size of the frame the write loop is sending now (0 when idle).
        self._in_flight = 0
        #: Writes this client had to wait for (over its rate); logged once per connection.
        self.throttled = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for this client plus the frame being written to it."""
        return self._pending

    @property
    def overflowed(self) -> bool:
        return self._overflowed.is_set()

    def send(self, frame: bytes) -> None:
        """Queue ``frame``; overflowing the outbox drops the client."""
        if self._overflowed.is_set():
            return
        # The oldest frame (being written, or next) is not held against the limit: a whole-document
        # STEP2 larger than the outbox must not get its reader dropped by the first small update
        # queued behind it while it downloads (the module's bound: the outbox plus one frame).
        head = self._in_flight or (len(self._outbox[0]) if self._outbox else 0)
        if self._pending and self._pending - head + len(frame) > self.max_outbox_bytes:
            self._overflowed.set()
            self._outbox.clear()
            self._pending = 0
            return
        self._outbox.append(frame)
        self._pending += len(frame)
        self._ready.set()

    async def write_loop(self) -> None:
        """Write queued frames in order (ends only by cancellation or a closed connection)."""
        while True:
            while not self._outbox:
                self._ready.clear()
                await self._ready.wait()
            frame = self._outbox.popleft()
            self._in_flight = len(frame)
            try:
                await self.ws.send(frame)
            finally:
                self._in_flight = 0
                if not self._overflowed.is_set():
                    self._pending -= len(frame)

    async def watch_overflow(self) -> None:
        """Raise :class:`Overflow` when the client falls too far behind (its writer may be stuck)."""
        await self._overflowed.wait()
        raise Overflow
