"""Declared sync metrics are set: synced, document size and the SyncStats counters, read at scrape time
from a real client talking to a real (in-process) rendezvous."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families
from tests.helpers.rendezvous import fast_client

from huskies_agent.metrics import Metrics
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.sync.server import RendezvousServer
from huskies_agent.sync.stats import SyncStats, SyncStatsCollector, export_sync_metrics


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_sync_state_document_size_and_counters_are_exported() -> None:
    metrics = Metrics()
    metrics.lead()  # only the leader exports the connection gauges
    doc = PipelineDoc()
    async with RendezvousServer(port=0) as server:
        client = fast_client(doc, server.url)
        export_sync_metrics(metrics, client.stats, lambda: client.synced, lambda: len(doc.encode_update()))
        before = scrape(metrics)
        assert value(before, "huskies_rendezvous_synced") == 0
        assert value(before, "huskies_rendezvous_connects_total") == 0
        async with client:
            await client.wait_synced(10)
            doc.add_story("1_metrics", stage="2_current", name="exported")
            assert await client.confirm(5)
            during = scrape(metrics)
            assert value(during, "huskies_rendezvous_synced") == 1
            assert value(during, "huskies_rendezvous_connects_total") == 1
            assert value(during, "huskies_document_bytes") == len(doc.encode_update())
            assert value(during, "huskies_document_bytes") > value(before, "huskies_document_bytes")
            assert value(during, "huskies_rendezvous_bytes_total", direction="out") == client.stats.bytes_out > 0
            assert value(during, "huskies_rendezvous_frames_total", direction="in") == client.stats.frames_in > 0
            assert value(during, "huskies_rendezvous_updates_total", direction="out") == client.stats.updates_sent
            assert value(during, "huskies_rendezvous_confirms_total", result="asked") >= 1
            assert value(during, "huskies_rendezvous_consecutive_failures") == 0
            assert value(during, "huskies_rendezvous_last_initial_sync_seconds") >= 0
        # the client stopped: its connection ended
        after = scrape(metrics)
        assert value(after, "huskies_rendezvous_synced") == 0
        assert value(after, "huskies_rendezvous_disconnects_total") == 1


def test_collector_describes_without_values_and_omits_an_unknown_sync_time() -> None:
    stats = SyncStats(connects=3, bytes_in=10, bytes_out=20, confirm_failures=2)
    collector = SyncStatsCollector(stats)
    described = collector.describe()
    assert all(not family.samples for family in described)
    live = {family.name: family for family in collector.collect()}
    assert {f.name for f in described} == set(live)
    assert live["huskies_rendezvous_connects"].samples[0].value == 3
    by_direction = {s.labels["direction"]: s.value for s in live["huskies_rendezvous_bytes"].samples}
    assert by_direction == {"in": 10, "out": 20}
    assert {s.labels["result"]: s.value for s in live["huskies_rendezvous_confirms"].samples} == {
        "asked": 0, "failed": 2}
    assert live["huskies_rendezvous_last_initial_sync_seconds"].samples == []


async def test_metrics_render_on_the_event_loop_while_a_client_runs() -> None:
    """The exporter reads the document on scrape; a scrape between updates sees a consistent size."""
    metrics = Metrics()
    doc = PipelineDoc()
    async with RendezvousServer(port=0) as server, fast_client(doc, server.url) as client:
        export_sync_metrics(metrics, client.stats, lambda: client.synced, lambda: len(doc.encode_update()))
        await client.wait_synced(10)
        sizes = []
        for i in range(5):
            doc.add_story(f"{i}_grow", stage="2_current")
            await asyncio.sleep(0)
            sizes.append(value(scrape(metrics), "huskies_document_bytes"))
        assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
