"""The fault-injecting TCP proxy of the fault tests, against a real echo server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from tests.helpers.tcpproxy import Direction, TcpProxy


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    handlers: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            with contextlib.suppress(OSError):
                while data := await reader.read(4096):
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                    timeout: float = 5.0) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


def proxy_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("tcpproxy-")}


async def test_forwards_both_ways_and_stop_leaves_no_task() -> None:
    async with echo_server() as port:
        proxy = await TcpProxy("127.0.0.1", port).start()
        async with client(proxy.port) as (reader, writer):
            assert await roundtrip(reader, writer, b"hello") == b"hello"
            big = bytes(range(256)) * 2048  # 512 KiB, more than one chunk
            assert await roundtrip(reader, writer, big) == big
            assert proxy.bytes[Direction.UPSTREAM] == proxy.bytes[Direction.DOWNSTREAM] == 5 + len(big)
            await proxy.stop()
            assert await reader.read() == b""  # the proxy closed the client's socket
        assert not proxy.connections
        assert not proxy_tasks()


async def test_cut_resets_live_connections_refuses_new_ones_and_heal_reopens_the_same_port() -> None:
    async with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        listen_port = proxy.port
        async with client(proxy.port) as (reader, writer):
            assert await roundtrip(reader, writer, b"before") == b"before"
            await proxy.cut()
            assert proxy.is_cut
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", listen_port)
        await proxy.heal()
        assert proxy.port == listen_port and not proxy.is_cut
        async with client(proxy.port) as (reader, writer):
            assert await roundtrip(reader, writer, b"after") == b"after"
    assert not proxy_tasks()


async def test_blackhole_holds_bytes_until_heal_without_closing() -> None:
    async with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        async with client(proxy.port) as (reader, writer):
            assert await roundtrip(reader, writer, b"a") == b"a"
            proxy.blackhole(Direction.DOWNSTREAM)
            writer.write(b"held")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(4), 0.5)
            assert proxy.bytes[Direction.UPSTREAM] == 5  # the request went through, the answer waits
            # New connections are accepted but stall as well.
            async with client(proxy.port) as (reader2, writer2):
                await proxy.wait_connections(2)
                writer2.write(b"x")
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(reader2.readexactly(1), 0.3)
                await proxy.heal()
                assert await asyncio.wait_for(reader2.readexactly(1), 5) == b"x"
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"


async def test_delay_one_direction_keeps_order() -> None:
    async with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        async with client(proxy.port) as (reader, writer):
            proxy.delay(0.4, Direction.UPSTREAM)
            started = time.monotonic()
            for i in range(5):
                writer.write(b"%d" % i)
                await writer.drain()
            got = await asyncio.wait_for(reader.readexactly(5), 5)
            assert got == b"01234"
            assert time.monotonic() - started >= 0.4
            proxy.delay(0)
            assert await roundtrip(reader, writer, b"fast") == b"fast"
        with pytest.raises(ValueError):
            proxy.delay(-1)


async def test_unreachable_server_closes_the_client() -> None:
    async with echo_server() as port:
        pass  # the port is free again: nothing listens there
    async with TcpProxy("127.0.0.1", port) as proxy:
        async with client(proxy.port) as (reader, _):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        await asyncio.sleep(0.05)
        assert not proxy.connections
    assert not proxy_tasks()
