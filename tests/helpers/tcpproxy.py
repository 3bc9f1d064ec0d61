"""A TCP proxy on loopback that tests put between a process and a server to inject network faults.

Every byte between the two goes through this process's event loop, so a test can:

* ``await proxy.cut()``         reset every live connection and refuse new ones (the listener is
                                closed: connecting fails with ECONNREFUSED, as if the server were gone);
* ``proxy.blackhole()``         a silent partition: live connections stay open but nothing is delivered
                                (bytes wait in the proxy), new connections are accepted and stall too;
                                per direction with ``direction=Direction.UPSTREAM`` or ``DOWNSTREAM``;
* ``proxy.delay(seconds)``      deliver every chunk ``seconds`` after it arrived (order kept), per direction;
* ``await proxy.heal()``        undo all of the above: listen again on the same port, deliver what waited.

Used as an async context manager (or ``start()``/``stop()``); ``stop()`` closes every socket and awaits
every task it started, so a test leaves nothing behind::

    async with TcpProxy("127.0.0.1", server_port) as proxy:
        client_url = f"ws://127.0.0.1:{proxy.port}/crdt-sync"
        ...
        await proxy.cut()
        await proxy.heal()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_CHUNK = 64 * 1024


class Direction(enum.Enum):
    UPSTREAM = "upstream"  # from the client to the server
    DOWNSTREAM = "downstream"  # from the server to the client
    BOTH = "both"

    def covers(self, other: Direction) -> bool:
        return self is Direction.BOTH or self is other


@dataclass
class _Flow:
    """The fault state of one direction, shared by every connection."""

    direction: Direction
    delay: float = 0.0
    open: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.open.set()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class _Connection:
    """One accepted client and its connection to the server: a reader and a writer per direction."""

    def __init__(self, proxy: TcpProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.server_writer: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    async def run(self) -> None:
        try:
            try:
                server_reader, self.server_writer = await asyncio.open_connection(
                    self.proxy.target_host, self.proxy.target_port)
            except OSError as exc:
                log.debug("proxy %s: server unreachable (%s); closing the client", self.proxy.port, exc)
                return
            pairs = (
                (self.client_reader, self.server_writer, self.proxy.flows[Direction.UPSTREAM]),
                (server_reader, self.client_writer, self.proxy.flows[Direction.DOWNSTREAM]),
            )
            for reader, writer, flow in pairs:
                queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
                self._spawn(self._read(reader, queue), f"read-{flow.direction.value}")
                self._spawn(self._write(queue, writer, flow), f"write-{flow.direction.value}")
            await self.closed.wait()
        finally:
            await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"tcpproxy-{self.proxy.port}-{name}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        # Either side ending (EOF, reset, a write error) ends the whole connection, as TCP would
        # for the other side once it notices; half-closed connections are not modelled.
        self.closed.set()

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(_CHUNK):
                queue.put_nowait((time.monotonic(), chunk))

    async def _write(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter,
                     flow: _Flow) -> None:
        with contextlib.suppress(OSError):
            while True:
                arrived, chunk = await queue.get()
                while True:
                    await flow.open.wait()
                    wait = arrived + flow.delay - time.monotonic()
                    if wait <= 0:
                        break
                    # A heal or a new delay setting takes effect for chunks already waiting.
                    changed = flow.changed
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), wait)
                writer.write(chunk)
                await writer.drain()
                self.proxy.bytes[flow.direction] += len(chunk)

    async def close(self) -> None:
        """Close both sockets at once (RST-like for the peers: no pending bytes are flushed)."""
        self.closed.set()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in (self.client_writer, self.server_writer):
            if writer is None:
                continue
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()
        self.proxy.connections.discard(self)


class TcpProxy:
    """A fault-injecting TCP proxy from ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0, name: str = "") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.name = name or f"proxy->{target_port}"
        self._port = port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.connections: set[_Connection] = set()
        self.flows: dict[Direction, _Flow] = {}
        self.bytes: dict[Direction, int] = {Direction.UPSTREAM: 0, Direction.DOWNSTREAM: 0}
        self.accepted = 0
        self._refusing = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the proxy has not been started")
        return self._port

    def url(self, scheme: str = "ws", path: str = "") -> str:
        return f"{scheme}://{HOST}:{self.port}{path}"

    async def start(self) -> Self:
        if not self.flows:
            self.flows = {d: _Flow(d) for d in (Direction.UPSTREAM, Direction.DOWNSTREAM)}
        await self._listen()
        return self

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, HOST, self._port, reuse_address=True)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def stop(self) -> None:
        """Close the listener and every connection, and wait for every task of the proxy."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._close_all()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:  # accepted in the instant before the listener closed
            writer.transport.abort()
            return
        self.accepted += 1
        conn = _Connection(self, (reader, writer))
        self.connections.add(conn)
        task = asyncio.create_task(conn.run(), name=f"tcpproxy-{self._port}-conn")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _close_all(self) -> None:
        await asyncio.gather(*(conn.close() for conn in list(self.connections)), return_exceptions=True)

    # ------------------------------------------------------------------ faults
    async def cut(self) -> None:
        """Reset every live connection and refuse new ones until :meth:`heal`."""
        self._refusing = True
        await self._unlisten()
        await self._close_all()
        log.info("%s: cut", self.name)

    def blackhole(self, direction: Direction = Direction.BOTH) -> None:
        """Hold every byte in ``direction`` (connections stay open and new ones are accepted)."""
        for d, flow in self.flows.items():
            if direction.covers(d):
                flow.open.clear()
                flow.notify()
        log.info("%s: blackhole %s", self.name, direction.value)

    def delay(self, seconds: float, direction: Direction = Direction.BOTH) -> None:
        """Deliver each chunk in ``direction`` ``seconds`` after it arrived (0 = no delay)."""
        if seconds < 0:
            raise ValueError(f"delay must be 0 or more, got {seconds}")
        for d, flow in self.flows.items():
            if direction.covers(d):
                flow.delay = seconds
                flow.notify()
        log.info("%s: delay %s by %.3fs", self.name, direction.value, seconds)

    async def heal(self) -> None:
        """Listen again (same port), deliver what waited, drop every delay."""
        for flow in self.flows.values():
            flow.delay = 0.0
            flow.open.set()
            flow.notify()
        self._refusing = False
        await self._listen()
        log.info("%s: healed", self.name)

    @property
    def is_cut(self) -> bool:
        return self._refusing

    async def wait_connections(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until at least ``count`` connections are open through the proxy."""
        await _poll(lambda: len(self.connections) >= count, timeout,
                    f"{count} connection(s) through {self.name}")


async def _poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
