"""Fixtures for the rendezvous sync tests: real servers on loopback, real clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.rendezvous import Clients, RendezvousProcess, start_rendezvous

from huskies_agent.sync.server import RendezvousServer

RendezvousFactory = Callable[..., RendezvousProcess]


@pytest.fixture
def rendezvous_factory(tmp_path: Path) -> Iterator[RendezvousFactory]:
    """Start rendezvous subprocesses (``factory(name="rv", token=..., max_size=...)``); all stopped after."""
    started: list[RendezvousProcess] = []

    def factory(name: str = "rv", **kwargs: Any) -> RendezvousProcess:
        server = start_rendezvous(tmp_path / name, **kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def rendezvous(rendezvous_factory: RendezvousFactory) -> RendezvousProcess:
    """One rendezvous subprocess with a database in the test's tmp dir."""
    return rendezvous_factory()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """``doc, client = await clients.start(url)``: a synced, fast-reconnecting client."""
    pool = Clients()
    try:
        yield pool
    finally:
        await pool.stop_all()


@pytest.fixture
async def memory_server() -> AsyncIterator[RendezvousServer]:
    """An in-process rendezvous (no database) on a free port, for client-side tests."""
    async with RendezvousServer(None, port=0) as server:
        yield server
