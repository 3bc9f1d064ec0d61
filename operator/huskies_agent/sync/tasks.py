"""Supervision of the tasks that serve one connection."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def first_to_finish(*coros: Coroutine[Any, Any, object]) -> None:
    """Run ``coros`` together until one of them ends; cancel the others.

    The exception of the first to end is raised (it is the reason the connection
    stopped); a coroutine that returns normally ends the group quietly. Cancelling
    the caller cancels every coroutine. Nothing is left running either way, so a
    reader that dies cannot leave its writer hanging, or the reverse.
    """
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task in done and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
