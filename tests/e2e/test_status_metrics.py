"""Metrics scraped from running operators, and the StoryJob conditions they write, against the real
control plane (kwok runs the build pods) and a real rendezvous."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.harness import eventually, flush, kube, pipeline

from huskies_agent import __version__

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

RESULT = json.dumps({"commit": "0123abc", "pushed": True, "cost_usd": 0.5})


def scrape(port: int) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        content_type = resp.headers["Content-Type"]
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return content_type, samples


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples) -> set[str]:
    return {name for name, _ in samples}


async def scraped(port: int):
    try:
        return scrape(port)[1]
    except OSError:
        return None


async def test_leader_exports_run_and_pipeline_metrics_and_standby_no_connection(
        start_op, namespace_factory, rendezvous, cluster):
    ns = namespace_factory()
    install = {"HUSKIES_CLUSTER_NAME": "metered", "HUSKIES_MAX_CONCURRENT": "3", "HUSKIES_BUILD_POD_ANNOTATIONS":
               json.dumps({"test.huskies/termination-message": RESULT, "test.huskies/run-for": "2s"})}
    _, leader_port = start_op("metered-1", ns, env={**install, "HUSKIES_REPLICA_ID": "replica-1"})
    await asyncio.sleep(2)
    _, standby_port = start_op("metered-2", ns, env={**install, "HUSKIES_REPLICA_ID": "replica-2"})
    async with pipeline(rendezvous) as doc, kube(str(cluster.kubeconfig_path), ns) as k:
        lease = await eventually(lambda: k.get_lease("huskies-agent-leader"), 20, what="lease")
        assert lease["spec"]["holderIdentity"] == "replica-1"
        doc.add_story("31_metered", stage="4_merge")
        doc.add_story("32_stuck", stage="2_current")
        doc.set_blocked("32_stuck", True)
        await flush(doc)
        await eventually(lambda: doc.story("31_metered").stage == "5_done", 90, what="story done")

        async def settled():
            s = await scraped(leader_port)
            return s if s and sample(s, "huskies_stories", stage="5_done", blocked="false") == 1 else None

        leader = await eventually(settled, 30, what="leader's resync exported the stories")
        assert sample(leader, "huskies_stories", stage="2_current", blocked="true") == 1
        assert sample(leader, "huskies_max_concurrent") == 3
        assert sample(leader, "huskies_stories_waiting") == 0
        assert sample(leader, "huskies_claim_to_running_seconds_count") == 1
        assert sample(leader, "huskies_claim_to_running_seconds_sum") > 0
        assert sample(leader, "huskies_build_info", version=__version__) == 1
        assert sample(leader, "huskies_leader") == 1
        assert sample(leader, "huskies_rendezvous_connected") == 1
        assert sample(leader, "huskies_rendezvous_synced") == 1
        # A fresh namespace: the node identity ConfigMap and the Lease were first read as 404s.
        assert sample(leader, "huskies_api_errors_total", verb="GET", code="404") >= 1
        assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"} <= names(leader)
        # A standby: huskies_leader 0, and no connection sample a "disconnected" alert could fire on.
        standby = await eventually(lambda: scraped(standby_port), 20, what="standby metrics")
        assert sample(standby, "huskies_leader") == 0
        assert not {"huskies_rendezvous_connected", "huskies_rendezvous_synced"} & names(standby)
        assert sample(standby, "huskies_build_info", version=__version__) == 1
        content_type, _ = scrape(leader_port)
        assert content_type.startswith("text/plain; version=0.0.4"), content_type

        (sj,) = await k.list_storyjobs("")
        conds = {c["type"]: c for c in sj["status"]["conditions"]}
        assert {t: (c["status"], c["reason"]) for t, c in conds.items()} == {
            "Claimed": ("True", "ClaimConfirmed"), "PodScheduled": ("True", "Scheduled"),
            "Succeeded": ("True", "Succeeded"), "Recorded": ("True", "DocumentWritten")}
        assert sj["status"]["observedGeneration"] == sj["metadata"]["generation"]
        assert sj["status"]["result"]["cost_usd"] == 0.5

