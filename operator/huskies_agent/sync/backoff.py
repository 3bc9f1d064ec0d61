"""Reconnect delays: exponential, jittered, bounded."""

from __future__ import annotations

import random
from collections.abc import Callable


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
