"""Prometheus metrics of the rendezvous, served at ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from huskies_agent.sync.limits import Refusal


class RendezvousMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.refused = Counter(
            "huskies_rendezvous_refused_total",
            "Writes and connections refused, by reason (" + ", ".join(x.value for x in Refusal) + ")",
            ["reason"], registry=r)
        for reason in Refusal:
            self.refused.labels(reason.value)
        self.throttled = Counter(
            "huskies_rendezvous_throttled_total", "Client writes delayed for exceeding the write rate",
            registry=r)
        self.updates = Counter("huskies_rendezvous_updates_total", "Client updates applied", registry=r)
        self.clients = Gauge("huskies_rendezvous_clients", "Connected clients", registry=r)
        self.document_bytes = Gauge(
            "huskies_rendezvous_document_bytes", "Encoded size of the document (upper estimate)", registry=r)
        self.outbox_bytes = Gauge(
            "huskies_rendezvous_outbox_bytes", "Bytes queued for all clients together", registry=r)
        self.quarantined = Gauge(
            "huskies_rendezvous_document_quarantined", "Document entries the rendezvous cannot parse",
            registry=r)
        self.skipped_rows = Counter(
            "huskies_rendezvous_skipped_rows_total", "Stored updates refused when loading the database",
            registry=r)

    def track(self, outbox: Callable[[], float], quarantined: Callable[[], float]) -> None:
        self.outbox_bytes.set_function(outbox)
        self.quarantined.set_function(quarantined)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
