"""What durable confirmations cost: the rendezvous's update log with synchronous=FULL vs NORMAL.

    .venv/bin/python bench/bench_store.py [--writes 300] [--batch 10] [--dir /var/tmp]

The rendezvous answers a client's STEP1 (its confirmation) only after every update
applied before it is committed (``UpdateStore.durable``). This measures confirmed
writes per second on the store alone, in the two ways they arrive:

* one at a time: append one update, wait until it is committed (one client, one claim);
* in batches: ``--batch`` appends, then one wait (many clients writing at once share
  one commit).

Run it on the disk the database will live on (``--dir``): the figure is the disk's
fsync latency, not Python's. tmpfs makes both modes look alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from huskies_agent.pipeline import stages  # noqa: E402
from huskies_agent.pipeline.document import PipelineDoc  # noqa: E402
from huskies_agent.sync.store import SYNCHRONOUS_MODES, UpdateStore  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)


def updates(count: int) -> list[bytes]:
    """Real claim-sized updates (one story's claim each)."""
    doc = PipelineDoc()
    doc.add_story("1_story", stage=stages.CURRENT)
    out: list[bytes] = []
    remove = doc.observe_updates(lambda update, _remote: out.append(update))
    for index in range(count):
        doc.claim("1_story", f"node-{index % 3}", float(index))
    remove()
    return out


async def confirmed_writes_per_second(path: Path, mode: str, data: list[bytes], batch: int) -> float:
    store = UpdateStore(path, synchronous=mode)
    await store.open()
    try:
        started = time.perf_counter()
        for index, update in enumerate(data, 1):
            store.append(update)
            if index % batch == 0:
                await store.durable()
        await store.durable()
        return len(data) / (time.perf_counter() - started)
    finally:
        await store.close()


async def bench(directory: Path, writes: int, batch: int) -> None:
    data = updates(writes)
    print(f"{'mode':8} {'one at a time':>16} {f'batches of {batch}':>16}")
    for mode in SYNCHRONOUS_MODES:
        single = await confirmed_writes_per_second(directory / f"{mode}-1.sqlite", mode, data, 1)
        batched = await confirmed_writes_per_second(directory / f"{mode}-b.sqlite", mode, data, batch)
        print(f"{mode:8} {single:>12.0f} w/s {batched:>12.0f} w/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None, help="directory for the databases (default: a temp dir)")
    args = parser.parse_args()
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        fs = os.statvfs(tmp)
        print(f"databases in {tmp} ({fs.f_bsize}-byte blocks); {args.writes} claim updates per run")
        asyncio.run(bench(Path(tmp), args.writes, args.batch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
