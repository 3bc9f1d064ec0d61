"""The rendezvous's per-client outbox (sync/peer.py): what it holds against its limit.

Found by bench_operator at 100,000 stories: a 26 MiB initial sync to a slow reader counted against
the 8 MiB outbox, so the first presence update queued behind it dropped the client (close 1013).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from huskies_agent.sync.peer import Peer


class SlowSocket:
    """A connection whose ``send`` completes only when the test lets it."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.release = asyncio.Event()

    async def send(self, frame: bytes) -> None:
        await self.release.wait()
        self.release.clear()
        self.sent.append(len(frame))


def _peer(limit: int) -> tuple[Peer, SlowSocket]:
    ws = SlowSocket()
    return Peer(cast(Any, ws), cast(Any, None), "client", limit), ws


async def test_a_frame_larger_than_the_outbox_downloads_while_small_updates_queue_behind_it() -> None:
    peer, ws = _peer(limit=1_000)
    writer = asyncio.create_task(peer.write_loop())
    peer.send(b"d" * 50_000)  # the whole document, 50 times the limit
    await asyncio.sleep(0)  # the write loop takes it and is stuck sending it
    for _ in range(9):
        peer.send(b"u" * 100)  # updates written by other nodes meanwhile: 900 bytes queued
    assert not peer.overflowed
    for _ in range(10):
        ws.release.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert ws.sent == [50_000] + [100] * 9
    assert peer.pending_bytes == 0
    writer.cancel()


async def test_the_big_frame_is_not_counted_before_the_write_loop_takes_it() -> None:
    peer, _ = _peer(limit=1_000)
    peer.send(b"d" * 50_000)
    peer.send(b"u" * 600)
    assert not peer.overflowed


async def test_more_than_the_outbox_queued_behind_the_oldest_frame_drops_the_client() -> None:
    peer, _ = _peer(limit=1_000)
    writer = asyncio.create_task(peer.write_loop())
    peer.send(b"d" * 50_000)
    await asyncio.sleep(0)
    for _ in range(10):
        peer.send(b"u" * 100)  # exactly the limit behind the frame in flight
    assert not peer.overflowed
    peer.send(b"u")  # one byte more
    assert peer.overflowed
    assert peer.pending_bytes == 0
    writer.cancel()
