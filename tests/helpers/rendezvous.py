"""Run a real rendezvous (``python -m huskies_agent rendezvous``) from tests and benchmarks.

The server runs as a subprocess so a test can kill it (SIGKILL: nothing flushed)
or stop it (SIGTERM: graceful) and start it again on the same port and database::

    from tests.helpers.rendezvous import start_rendezvous, synced_client, wait_until

    with start_rendezvous(tmp_path) as server:           # waits for GET /healthz
        async with synced_client(server.url) as (doc, client):
            doc.add_story("s1", stage="2_current")
            assert await client.confirm(5)
        await server.arestart()                           # same port, same database

Its log (text format, INFO) is ``server.log_path``; ``server.logs()`` reads it and
``server.wait_for_log(text)`` waits for a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync.client import RendezvousClient

HOST = "127.0.0.1"
SYNC_PATH = "/crdt-sync"


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def healthy(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when ``GET /healthz`` answers 200."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@dataclass
class RendezvousProcess:
    """A rendezvous subprocess bound to one port and one database file."""

    directory: Path
    port: int
    token: str = ""
    extra_args: Sequence[str] = ()
    host: str = HOST
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def db_path(self) -> Path:
        return self.directory / "rendezvous.sqlite"

    @property
    def log_path(self) -> Path:
        return self.directory / "rendezvous.log"

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{SYNC_PATH}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "huskies_agent", "--log-level", "INFO", "--log-format", "text",
            "rendezvous", "--host", self.host, "--port", str(self.port), "--db", str(self.db_path),
        ]
        if self.token:
            token_file = self.directory / "token"
            token_file.write_text(self.token + "\n")
            cmd += ["--token-file", str(token_file)]
        return [*cmd, *self.extra_args]

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> Self:
        """Start the server and wait until it answers ``/healthz``."""
        if self.running:
            raise RuntimeError("the rendezvous is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                self.command(), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while not healthy(self.host, self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the rendezvous exited with status {self.proc.returncode}:\n{self.logs()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"the rendezvous did not become healthy in {timeout} s:\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful: compacts and closes the database); SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process dies without flushing or compacting anything."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self.proc = None

    def restart(self, timeout: float = 30.0, *, graceful: bool = True) -> Self:
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start(timeout)

    # async wrappers, so clients on the test's event loop keep running meanwhile
    async def astart(self, timeout: float = 30.0) -> Self:
        return await asyncio.to_thread(self.start, timeout)

    async def astop(self, timeout: float = 15.0) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    async def arestart(self, timeout: float = 30.0, *, graceful: bool = True) -> Self:
        return await asyncio.to_thread(lambda: self.restart(timeout, graceful=graceful))

    # ------------------------------------------------------------------ logs
    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The first log line containing ``text``; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.logs().splitlines():
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"no log line with {text!r}; log:\n{self.logs()[-3000:]}")
            time.sleep(0.05)

    async def await_log(self, text: str, timeout: float = 10.0) -> str:
        return await asyncio.to_thread(self.wait_for_log, text, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_rendezvous(
    directory: Path,
    *,
    token: str = "",
    max_size: int | None = None,
    extra_args: Sequence[str] = (),
    port: int | None = None,
    timeout: float = 30.0,
) -> RendezvousProcess:
    """Start a rendezvous keeping its database, token and log in ``directory``.

    Use it as a context manager (stops on exit) or call ``stop()`` yourself.
    """
    args = list(extra_args)
    if max_size is not None:
        args += ["--max-size", str(max_size)]
    server = RendezvousProcess(directory, port or free_port(), token=token, extra_args=args)
    return server.start(timeout)


def fast_client(doc: PipelineDoc, url: str, **kwargs: Any) -> RendezvousClient:
    """A client that reconnects within a fraction of a second (for tests)."""
    kwargs.setdefault("reconnect_min", 0.05)
    kwargs.setdefault("reconnect_max", 0.5)
    kwargs.setdefault("open_timeout", 5.0)
    return RendezvousClient(doc, url, **kwargs)


class Clients:
    """Starts :func:`fast_client` clients in the background; :meth:`stop_all` stops every one."""

    def __init__(self) -> None:
        self._running: list[RendezvousClient] = []

    async def start(
        self, url: str, doc: PipelineDoc | None = None, *, synced: bool = True, **kwargs: Any
    ) -> tuple[PipelineDoc, RendezvousClient]:
        doc = doc if doc is not None else PipelineDoc()
        client = fast_client(doc, url, **kwargs)
        await client.__aenter__()
        self._running.append(client)
        if synced:
            await client.wait_synced(10)
        return doc, client

    async def stop(self, client: RendezvousClient) -> None:
        if client in self._running:
            self._running.remove(client)
        await client.__aexit__(None, None, None)

    async def stop_all(self) -> None:
        while self._running:
            await self.stop(self._running[-1])


@contextlib.asynccontextmanager
async def synced_client(
    url: str, doc: PipelineDoc | None = None, *, timeout: float = 10.0, **kwargs: Any
) -> AsyncIterator[tuple[PipelineDoc, RendezvousClient]]:
    """A running, synced :func:`fast_client` on a new (or the given) document."""
    doc = doc if doc is not None else PipelineDoc()
    async with fast_client(doc, url, **kwargs) as client:
        await client.wait_synced(timeout)
        yield doc, client


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; raise AssertionError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)
