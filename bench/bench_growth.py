"""How fast the pipeline document grows under presence and claim traffic, and what compaction keeps.

    .venv/bin/python bench/bench_growth.py [--nodes 5] [--hours 24] [--stories-per-day 200]

A real rendezvous (``huskies-agent rendezvous`` with an SQLite database) and one real sync client
per simulated node, each with its own document. Time is compressed: a simulated day is every write
a node makes in 24 h, sent as fast as the rendezvous confirms them:

* presence: one write per ``presence_interval_seconds`` (30 s: 2,880 a day per node);
* claims: ``--stories-per-day`` stage runs a day shared by the nodes, each a claim then a
  completion (the two writes a real run makes).

Printed per simulated hour and at the end: the encoded document (what a new node downloads),
bytes added per node per day, and the database file before and after the rendezvous compacts it
(a restart loads the log and compacts; ``--compact-every`` also compacts while running).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.helpers.rendezvous import fast_client, start_rendezvous  # noqa: E402

from huskies_agent.pipeline import stages  # noqa: E402
from huskies_agent.pipeline.document import PipelineDoc  # noqa: E402
from huskies_agent.pipeline.model import NodePresence  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)

PRESENCE_INTERVAL_S = 30.0


def _db_size(db: Path) -> int:
    """The database with its write-ahead log (SQLite in WAL mode keeps recent writes there)."""
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def _doc_bytes(doc: PipelineDoc) -> int:
    return len(doc.encode_update())


async def _fresh_download(url: str) -> int:
    """Bytes of the whole document a node joining now receives."""
    doc = PipelineDoc()
    async with fast_client(doc, url) as client:
        await client.wait_synced(timeout=60)
        size = _doc_bytes(doc)
    doc.close()
    return size


async def simulate(args: argparse.Namespace, workdir: Path) -> None:
    server = start_rendezvous(workdir, extra_args=["--compact-every", str(args.compact_every)])
    db = server.db_path
    try:
        url = server.url
        seed = PipelineDoc()
        async with fast_client(seed, url) as client:
            await client.wait_synced(timeout=30)
            seed.add_stories({"story_id": f"s{i:05d}", "stage": stages.CURRENT, "name": f"story {i}"}
                             for i in range(args.stories))
            assert await client.confirm(30)
        seed.close()
        start_bytes = await _fresh_download(url)
        nodes = [f"node-{i}" for i in range(args.nodes)]
        docs = {n: PipelineDoc() for n in nodes}
        clients = {n: fast_client(docs[n], url) for n in nodes}
        for c in clients.values():
            await c.__aenter__()
        try:
            for c in clients.values():
                await c.wait_synced(timeout=60)
            presence_per_hour = int(3600 / PRESENCE_INTERVAL_S)
            runs_per_hour = max(1, round(args.stories_per_day / 24))
            story_index = 0
            started = time.perf_counter()
            print(f"{'hour':>4} {'document B':>12} {'+B/node/h':>10} {'db file B':>12}")
            previous = start_bytes
            for hour in range(1, args.hours + 1):
                for tick in range(presence_per_hour):
                    for n in nodes:
                        docs[n].put_presence(NodePresence(node_id=n, last_seen=time.time(), capacity=4,
                                                          extra={"cluster": "bench"}))
                    if tick % max(1, presence_per_hour // runs_per_hour) == 0:
                        n = nodes[story_index % len(nodes)]
                        sid = f"s{story_index % args.stories:05d}"
                        story_index += 1
                        story = docs[n].story(sid)
                        if story is not None and stages.is_active(story.stage) and story.claim is None:
                            claim = docs[n].claim(sid, n, time.time())
                            docs[n].complete(sid, n, claim.epoch, claim.stage, time.time())
                    await asyncio.sleep(0)
                for c in clients.values():
                    assert await c.confirm(60)
                size = await _fresh_download(url)
                per_node_hour = (size - previous) / len(nodes)
                previous = size
                print(f"{hour:>4} {size:>12,} {per_node_hour:>10,.0f} {_db_size(db):>12,}")
            elapsed = time.perf_counter() - started
        finally:
            for c in clients.values():
                await c.__aexit__(None, None, None)
            for d in docs.values():
                d.close()
        end_bytes = await _fresh_download(url)
        before = _db_size(db)
        server.stop()
        server = start_rendezvous(workdir, port=server.port,
                                  extra_args=["--compact-every", str(args.compact_every)])
        after_restart = _db_size(db)
        compacted = await _fresh_download(server.url)
        days = args.hours / 24
        growth = (end_bytes - start_bytes) / len(nodes) / days
        print()
        print(f"simulated {args.hours} h of {len(nodes)} nodes in {elapsed:.1f} s "
              f"({story_index} stage runs, {presence_per_hour * args.hours * len(nodes):,} presence writes)")
        print(f"document: {start_bytes:,} B at start (stories only) -> {end_bytes:,} B "
              f"= {growth:,.0f} B per node per day")
        print(f"database: {before:,} B before restart, {after_restart:,} B after the restart's compaction; "
              f"document served after restart {compacted:,} B")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--stories", type=int, default=1000, help="stories in the document")
    parser.add_argument("--stories-per-day", type=int, default=200, help="stage runs a day, all nodes")
    parser.add_argument("--compact-every", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
        asyncio.run(simulate(args, Path(tmp)))


if __name__ == "__main__":
    main()
