"""During a burst the creates come first: status writes and Events wait until the starts
queued are done (the API server's CPU is what a burst waits for), and the log line of each
start carries its timings (engine/timing.py) for the benchmark's breakdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from tests.unit.engine.conftest import Harness


async def test_follow_ups_wait_for_the_starts_in_progress(h: Harness) -> None:
    ctx = h.engine.ctx
    order: list[str] = []

    async def follow_up() -> None:
        async with ctx.followup():
            order.append("follow-up")

    ctx.start_begins()
    task = asyncio.create_task(follow_up())
    for _ in range(20):
        await asyncio.sleep(0)
    assert order == []
    order.append("start done")
    ctx.start_ends()
    await asyncio.wait_for(task, 1)
    assert order == ["start done", "follow-up"]
    # With nothing starting, a follow-up goes at once.
    await asyncio.wait_for(follow_up(), 1)


async def test_a_burst_creates_every_job_before_any_status_write(h: Harness) -> None:
    create_job = h.kube.create_job

    calls = 0

    async def slow_create(body: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        for _ in range(20 * calls):  # creates take a while, some longer: other tasks run meanwhile
            await asyncio.sleep(0)
        return await create_job(body)

    h.kube.create_job = slow_create  # type: ignore[method-assign]
    h.doc.add_stories([{"story_id": f"{i}_burst", "stage": "2_current"} for i in range(4)])
    await h.settle()
    methods = [method for method, _ in h.kube.calls]
    creates = [i for i, m in enumerate(methods) if m == "create_job"]
    patches = [i for i, m in enumerate(methods) if m in ("patch_storyjob_status", "post_event")]
    assert len(creates) == 4 and patches and max(creates) < min(patches)


async def test_each_start_logs_its_timings_in_order(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="huskies_agent.engine"):
        h.doc.add_story("1_timed", stage="2_current")
        await h.settle()
    [record] = [r for r in caplog.records if r.getMessage().startswith("started story 1_timed")]
    # (the harness calls reconcile itself, so no "heard": the dispatch loop passes that)
    steps = ["t_decided", "t_written", "t_confirmed", "t_slot", "t_storyjob", "t_job"]
    times = [getattr(record, step) for step in steps]
    assert times == sorted(times)
