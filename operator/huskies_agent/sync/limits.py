"""The rendezvous's resource limits and the pure decisions that enforce them.

Every limit bounds what one client (or all of them) can make the server hold:

========================  ==========================================================
``max_document_bytes``    the document's encoded size; a write that would pass it is
                          refused (close 1008) and never applied
``max_update_bytes``      one live update (UPDATE message); larger: close 1009
``max_outbox_bytes``      bytes queued for one client that reads too slowly; past it
                          the client is dropped (close 1013), its queue freed
``max_writes_per_second`` updates one client may send per second (``write_burst`` at
                          once); faster clients are not read until they are back
                          under the rate (their TCP window fills, nothing is queued)
``max_connections``       connections served at once; more: HTTP 503 / close 1013
``max_value_depth``       nesting of one value inside an update (close 1008)
========================  ==========================================================

Memory stays bounded by about ``document + max_connections * (max_outbox_bytes +
document)``: a client that stops reading holds at most its outbox plus the one frame
being written to it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from huskies_agent.sync.updates import DEFAULT_MAX_VALUE_DEPTH

MIB = 2**20
#: Bytes a STEP2 frame adds around the document it carries.
FRAME_OVERHEAD = 64


class Refusal(enum.Enum):
    """Why the server refused a client's write or connection (the metric's ``reason`` label)."""

    DOCUMENT_TOO_LARGE = "document_too_large"
    UPDATE_TOO_LARGE = "update_too_large"
    VALUE_TOO_DEEP = "value_too_deep"
    TOO_SLOW = "too_slow"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_document_bytes: int = 32 * MIB
    max_update_bytes: int = 4 * MIB
    max_outbox_bytes: int = 8 * MIB
    max_writes_per_second: float = 50.0
    write_burst: int = 200
    max_connections: int = 128
    max_value_depth: int = DEFAULT_MAX_VALUE_DEPTH

    def problem(self, max_frame_bytes: int) -> str | None:
        """Why these limits cannot work with frames of ``max_frame_bytes``, or ``None``."""
        if min(self.max_document_bytes, self.max_update_bytes, self.max_outbox_bytes) < 1024:
            return "the document, update and outbox limits must be at least 1024 bytes"
        if self.max_update_bytes > self.max_document_bytes:
            return "the update limit cannot be larger than the document limit"
        if self.max_document_bytes + FRAME_OVERHEAD > max_frame_bytes:
            # Otherwise a client could never receive the whole document in one STEP2.
            return (
                f"the document limit ({self.max_document_bytes} bytes) must leave room in the "
                f"frame limit ({max_frame_bytes} bytes)"
            )
        if self.max_writes_per_second <= 0 or self.write_burst < 1:
            return "the write rate must be positive and the burst at least 1"
        if self.max_connections < 1:
            return "at least one connection must be allowed"
        if self.max_value_depth < 8:
            return "the value depth limit must be at least 8"
        return None


def document_refusal(current_bytes: int, update_bytes: int, limit: int) -> str | None:
    """Why applying an update of ``update_bytes`` to a document of ``current_bytes`` is refused.

    An update can grow the document by at most about its own size, so the sum is the
    bound checked *before* the update is applied (a refused update never touches it).
    """
    if current_bytes + update_bytes <= limit:
        return None
    return (
        f"the document would exceed its {limit}-byte limit "
        f"({current_bytes} bytes + an update of {update_bytes} bytes)"
    )


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. Time is passed in (testable)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> float:
        """Take one token; returns the seconds to wait before acting (0: act now)."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
