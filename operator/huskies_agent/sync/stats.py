"""Counters of a sync connection, and their export as Prometheus metrics (:class:`SyncStatsCollector`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from huskies_agent.metrics import Metrics


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


#: (metric name without ``_total``, help, {label value: field}) of the counters exported.
_COUNTERS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("huskies_rendezvous_connects", "Rendezvous connections opened", "", {"": "connects"}),
    ("huskies_rendezvous_disconnects", "Rendezvous connections that ended", "", {"": "disconnects"}),
    ("huskies_rendezvous_connect_failures", "Rendezvous connection attempts that failed before the initial sync",
     "", {"": "connect_failures"}),
    ("huskies_rendezvous_bytes", "Bytes of sync frames, by direction", "direction",
     {"in": "bytes_in", "out": "bytes_out"}),
    ("huskies_rendezvous_frames", "Sync frames, by direction", "direction",
     {"in": "frames_in", "out": "frames_out"}),
    ("huskies_rendezvous_updates", "Document updates sent to and applied from the rendezvous", "direction",
     {"in": "updates_received", "out": "updates_sent"}),
    ("huskies_rendezvous_confirms", "Confirmation round trips asked of the rendezvous, by result", "result",
     {"asked": "confirms", "failed": "confirm_failures"}),
)


class SyncStatsCollector:
    """Reads one client's :class:`SyncStats` at every scrape (a prometheus_client collector).

    ``stats`` is the live object the client mutates; nothing copies it, so the exported values are
    the counters themselves. Scrapes run on the event loop thread (the metrics endpoint is an aiohttp
    handler), so reading them needs no lock.
    """

    def __init__(self, stats: SyncStats) -> None:
        self.stats = stats

    def describe(self) -> list[Any]:
        return self._families(live=False)

    def collect(self) -> list[Any]:
        return self._families(live=True)

    def _families(self, *, live: bool) -> list[Any]:
        s = self.stats
        families: list[Any] = []
        for name, help_text, label, fields in _COUNTERS:
            counter = CounterMetricFamily(name, help_text, labels=[label] if label else None)
            if live:
                for value, field_name in fields.items():
                    counter.add_metric([value] if label else [], float(getattr(s, field_name)))
            families.append(counter)
        failures = GaugeMetricFamily("huskies_rendezvous_consecutive_failures",
                                     "Failed rendezvous connection attempts in a row (0 once synced)")
        last_sync = GaugeMetricFamily("huskies_rendezvous_last_initial_sync_seconds",
                                      "Seconds the last rendezvous connection took to its initial sync")
        if live:
            failures.add_metric([], float(s.consecutive_failures))
            if s.last_initial_sync_seconds is not None:
                last_sync.add_metric([], s.last_initial_sync_seconds)
        return [*families, failures, last_sync]


def export_sync_metrics(
    metrics: Metrics, stats: SyncStats, synced: Callable[[], bool], document_bytes: Callable[[], int],
    *, bytes_max_age: float = 0.0, monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Export a client's sync state into the operator's metrics, all read at scrape time.

    ``huskies_rendezvous_synced`` from ``synced()``, ``huskies_document_bytes`` from
    ``document_bytes()`` (the encoded document: computed on a scrape, at most once per
    ``bytes_max_age`` seconds, since encoding 100,000 stories takes ~0.2 s of CPU), and every
    :class:`SyncStats` counter through :class:`SyncStatsCollector`.
    """
    cache: list[float] = []  # [size, when]

    def size() -> float:
        now = monotonic()
        if not cache or now - cache[1] >= bytes_max_age:
            cache[:] = [float(document_bytes()), now]
        return cache[0]

    metrics.synced.set_function(lambda: 1.0 if synced() else 0.0)
    metrics.doc_bytes.set_function(size)
    metrics.registry.register(SyncStatsCollector(stats))
