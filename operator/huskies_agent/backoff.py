"""The package's one retry/backoff policy: exponential, jittered, bounded.

Every loop that retries (the rendezvous reconnect, API calls, adoption, confirmation of
claims and outcomes) draws its delays from here, so no caller hand-writes a backoff and
none retries in a tight loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def reconnect_delay(
    failures: int,
    minimum: float,
    maximum: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before the next attempt after ``failures`` consecutive failures.

    The ceiling doubles from ``minimum`` with each failure up to ``maximum``; the
    delay is drawn from the upper half of ``[0, ceiling]`` and never leaves
    ``[minimum, maximum]``, so clients dropped together do not return together.
    """
    if minimum <= 0 or maximum < minimum:
        raise ValueError(f"need 0 < minimum <= maximum, got {minimum}, {maximum}")
    exponent = min(max(failures, 1) - 1, 64)
    ceiling = min(maximum, minimum * 2.0**exponent)
    delay = ceiling * (0.5 + rand() / 2)
    return min(maximum, max(minimum, delay))


@dataclass
class Backoff:
    """Consecutive-failure counter that hands out :func:`reconnect_delay` delays."""

    minimum: float = 0.5
    maximum: float = 30.0
    rand: Callable[[], float] = field(default=random.random, repr=False)
    failures: int = 0

    def next_delay(self, floor: float = 0.0) -> float:
        """The delay after one more failure; ``floor`` (e.g. a ``Retry-After``) is honoured."""
        self.failures += 1
        return max(floor, reconnect_delay(self.failures, self.minimum, self.maximum, self.rand))

    def reset(self) -> None:
        self.failures = 0


async def retry_forever(
    attempt: Callable[[], Awaitable[T]],
    what: str,
    *,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Await ``attempt()`` until it succeeds, logging each failure and backing off."""
    policy = backoff or Backoff(minimum=1.0, maximum=30.0)
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the caller decides what is worth retrying by what it raises
            delay = policy.next_delay()
            log.warning("could not %s: %s; retrying in %.1fs", what, exc or type(exc).__name__, delay)
            await sleep(delay)
