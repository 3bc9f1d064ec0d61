"""Counters of a sync connection, read by the metrics exporter."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SyncStats:
    """Mutable counters owned by one :class:`~huskies_agent.sync.client.RendezvousClient`."""

    #: Connections opened (WebSocket handshake completed).
    connects: int = 0
    #: Connections that ended, for whatever reason.
    disconnects: int = 0
    #: Attempts that failed before completing an initial sync.
    connect_failures: int = 0
    #: Failed attempts in a row (0 once a connection syncs).
    consecutive_failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    #: Local updates sent to the peer (UPDATE messages).
    updates_sent: int = 0
    #: Updates received from the peer and applied (UPDATE and STEP2 messages).
    updates_received: int = 0
    #: Seconds from the start of the last connection attempt to its initial sync.
    last_initial_sync_seconds: float | None = None
    confirms: int = 0
    confirm_failures: int = 0
    #: The reason the last connection attempt failed or the last connection ended.
    last_error: str = ""
