"""The rendezvous's durable copy of the document: an SQLite log of updates.

Every update the document emits is appended as one row; :meth:`UpdateStore.compact`
replaces all rows with one snapshot (the whole document as a single update).
Loading replays the rows in order. Writes happen on one worker thread, in the
order they were queued, so a snapshot never overtakes the appends before it.

The database runs in WAL mode with ``synchronous=FULL`` by default: a committed
row (and so every write the server confirmed) is on disk and survives a power cut,
at the cost of an fsync per commit (``bench/bench_store.py`` measures it; writes
that arrive while one commits share the next commit). ``NORMAL`` survives the
process being killed but not necessarily a power cut.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA_VERSION = 1
#: Seconds to wait before retrying a failed write.
_RETRY_DELAY = 1.0
#: ``PRAGMA synchronous`` values accepted (see the module docstring).
SYNCHRONOUS_MODES = ("FULL", "NORMAL")


@dataclass(frozen=True, slots=True)
class _Op:
    data: bytes
    #: True: replace everything stored so far with ``data`` (a snapshot).
    snapshot: bool = False


class UpdateStore:
    """Append-only update log in SQLite. Call :meth:`open` first, :meth:`close` last."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rendezvous-store")
        self._db: sqlite3.Connection | None = None
        self._queue: list[_Op] = []
        self._queued = 0
        self._committed = 0
        self._rows = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._writer: asyncio.Task[None] | None = None

    @property
    def rows(self) -> int:
        """Rows stored or queued (1 right after a compaction)."""
        return self._rows

    async def open(self) -> list[bytes]:
        """Open (creating if needed) the database; returns the stored updates in order."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        updates = await self._run(self._open_sync)
        self._rows = len(updates)
        self._writer = asyncio.create_task(self._write_loop(), name="rendezvous-store-writer")
        return updates

    def append(self, update: bytes) -> None:
        """Queue ``update`` for writing (never blocks; safe inside a pycrdt callback)."""
        self._enqueue(_Op(update))
        self._rows += 1

    def compact(self, snapshot: bytes) -> None:
        """Queue replacing every row so far with ``snapshot`` (the whole document)."""
        self._enqueue(_Op(snapshot, snapshot=True))
        self._rows = 1

    async def durable(self) -> None:
        """Return once everything queued before this call is committed."""
        target = self._queued
        async with self._progress:
            await self._progress.wait_for(lambda: self._committed >= target)

    async def close(self) -> None:
        """Write what is queued, then close the database."""
        if self._writer is not None:
            await self.durable()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._db is not None:
            await self._run(self._close_sync)
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ internals
    def _enqueue(self, op: _Op) -> None:
        self._queue.append(op)
        self._queued += 1
        self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                await self._write_with_retry(batch)
                async with self._progress:
                    self._committed += len(batch)
                    self._progress.notify_all()

    async def _write_with_retry(self, batch: list[_Op]) -> None:
        while True:
            try:
                await self._run(partial(self._write_sync, batch))
                return
            except sqlite3.Error as exc:
                log.error("cannot write to %s (%s); retrying in %.0f s", self.path, exc, _RETRY_DELAY)
                await asyncio.sleep(_RETRY_DELAY)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # The methods below run on the worker thread only.
    def _open_sync(self) -> list[bytes]:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            db.close()
            raise RuntimeError(f"{self.path}: unknown store format {version}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS updates (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL)"
        )
        db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        self._db = db
        return [bytes(row[0]) for row in db.execute("SELECT data FROM updates ORDER BY id")]

    def _write_sync(self, batch: list[_Op]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            for op in batch:
                if op.snapshot:
                    db.execute("DELETE FROM updates")
                db.execute("INSERT INTO updates (data) VALUES (?)", (op.data,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
