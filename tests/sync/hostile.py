"""Hostile inputs for the sync tests and the fuzz tier: nested values, raw frames, stalled sockets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from pycrdt import Map

from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import PipelineDoc

#: The start of an update writing story ``s1`` with stage ``2_current`` and a ``name`` holding
#: one value (pycrdt output, client id 1). A nested list follows, then ``\x00`` (no deletions).
_NESTED_PREFIX = (
    b"\x01\x04\x01\x00'\x01\x05items\x02s1\x01(\x00\x01\x00\x08story_id\x01w\x02s1"
    b"(\x00\x01\x00\x05stage\x01w\t2_current(\x00\x01\x00\x04name\x01"
)


def nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_update(depth: int) -> bytes:
    """An update whose story ``s1`` has a ``name`` that is a list nested ``depth`` deep.

    Built by hand: the CRDT library itself crashes (stack overflow) building or reading
    values a few ten thousand deep, which is exactly what a hostile peer can send.
    """
    return _NESTED_PREFIX + b"\x75\x01" * (depth - 1) + b"\x75\x00\x00"


def story_update(story_id: str, **fields: Any) -> bytes:
    """The update creating one story (fields as given, stage 2_current by default)."""
    doc = PipelineDoc()
    with doc.doc.transaction():
        doc._items[story_id] = Map({"story_id": story_id, "stage": stages.CURRENT, **fields})
    return doc.encode_update()


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class RawSocket:
    """A WebSocket client over a raw socket that sends what it is told and never reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> RawSocket:
        host_port = url.removeprefix("ws://").split("/", 1)[0]
        host, port = host_port.split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # back-pressure at once
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            f"GET /crdt-sync HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:80]!r}")
        return cls(reader, writer)

    def send(self, payload: bytes) -> None:
        from websockets.frames import Frame, Opcode

        self.writer.write(Frame(Opcode.BINARY, payload).serialize(mask=True))

    def close(self) -> None:
        self.writer.close()


async def refused_close(url: str, frame: bytes) -> tuple[int, str]:
    """Send ``frame`` on a fresh connection; the close code and reason the server answers with."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosedError

    async with connect(url, max_size=None) as ws:
        await ws.send(frame)
        try:
            while True:
                await ws.recv()
        except ConnectionClosedError as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason
