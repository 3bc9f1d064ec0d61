"""The SQLite update log behind the rendezvous, and the document's update feed."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from huskies_agent.pipeline.document import REMOTE_ORIGIN, PipelineDoc
from huskies_agent.sync.store import UpdateStore


def _replay(updates: list[bytes]) -> PipelineDoc:
    doc = PipelineDoc()
    for update in updates:
        doc.apply_remote(update)
    return doc


async def test_appends_survive_reopening(tmp_path: Path) -> None:
    doc = PipelineDoc()
    store = UpdateStore(tmp_path / "db" / "doc.sqlite")
    assert await store.open() == []
    doc.observe_updates(lambda update, remote: store.append(update))
    doc.add_story("s1", stage="2_current")
    doc.move("s1", "3_qa")
    await store.durable()
    assert store.rows == 2
    await store.close()

    again = UpdateStore(tmp_path / "db" / "doc.sqlite")
    rows = await again.open()
    assert len(rows) == 2
    story = _replay(rows).story("s1")
    assert story is not None and story.stage == "3_qa"
    await again.close()


async def test_compaction_replaces_rows_with_one_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "doc.sqlite"
    doc = PipelineDoc()
    store = UpdateStore(path)
    await store.open()
    doc.observe_updates(lambda update, remote: store.append(update))
    for index in range(20):
        doc.add_story(f"s{index}", stage="1_backlog")
    store.compact(doc.encode_update())
    doc.move("s3", "4_merge")  # after the snapshot: stays a row of its own
    await store.durable()
    assert store.rows == 2
    await store.close()

    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM updates").fetchone()[0] == 2
    again = UpdateStore(path)
    replayed = _replay(await again.open())
    await again.close()
    assert len(replayed) == 20
    story = replayed.story("s3")
    assert story is not None and story.stage == "4_merge"


async def test_durable_returns_at_once_when_nothing_is_queued(tmp_path: Path) -> None:
    store = UpdateStore(tmp_path / "doc.sqlite")
    await store.open()
    await store.durable()
    await store.close()


def test_update_feed_marks_remote_updates() -> None:
    source, replica = PipelineDoc(), PipelineDoc()
    seen: list[tuple[int, bool]] = []
    remove = replica.observe_updates(lambda update, remote: seen.append((len(update), remote)))
    replica.add_story("local", stage="2_current")
    source.add_story("remote", stage="2_current")
    replica.apply_remote(source.encode_update())
    replica.apply_remote(source.encode_update())  # a duplicate changes nothing: no event
    assert [remote for _, remote in seen] == [False, True]
    remove()
    replica.move("local", "3_qa")
    assert len(seen) == 2
    assert REMOTE_ORIGIN  # the origin the feed recognises


def test_a_failing_update_listener_does_not_break_writes() -> None:
    doc = PipelineDoc()
    calls: list[bool] = []

    def broken(update: bytes, remote: bool) -> None:
        calls.append(remote)
        raise RuntimeError("listener bug")

    doc.observe_updates(broken)
    doc.add_story("s1", stage="2_current")
    assert calls == [False] and doc.story("s1") is not None
    doc.close()
    doc_two = PipelineDoc()
    doc_two.observe_updates(broken)
    doc_two.close()  # detaches the document observer too
