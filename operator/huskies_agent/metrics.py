"""Prometheus metrics of one operator process (own registry: no global state)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from huskies_agent import __version__

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Claim confirmed until the pod runs: scheduling, node autoscaling and image pulls (seconds to many minutes).
STARTUP_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
TURN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.claims = Counter(
            "huskies_claims_total",
            "Claims by outcome (won, lost, unconfirmed: a confirmation retried, released: handed off after a "
            "disruption, taken_over: from a node silent past the claim timeout)",
            ["outcome"], registry=r)
        self.jobs_created = Counter("huskies_jobs_created_total", "Jobs created for stories", registry=r)
        self.jobs_finished = Counter(
            "huskies_jobs_finished_total", "Story Jobs finished, by result", ["result"], registry=r)
        self.jobs_deleted = Counter(
            "huskies_jobs_deleted_total", "Story Jobs deleted, by reason", ["reason"], registry=r)
        self.storyjobs = Gauge("huskies_storyjobs", "StoryJobs this node runs, by phase", ["phase"], registry=r)
        # The connection gauges are registered by :meth:`lead` only: a standby holds no connection, and
        # exports no sample rather than a 0 that reads as "disconnected".
        self.connected = Gauge("huskies_rendezvous_connected",
                               "1 while the leader is connected to the rendezvous (standbys: no sample)",
                               registry=None)
        self.synced = Gauge("huskies_rendezvous_synced",
                            "1 once the leader's document is synced (standbys: no sample)", registry=None)
        self._leading = False
        self.initial_sync = Gauge("huskies_rendezvous_initial_sync_seconds",
                                  "Time from engine start to the first full sync of the document", registry=r)
        self.leader = Gauge("huskies_leader", "1 while this replica holds the leader Lease", registry=r)
        self.doc_stories = Gauge("huskies_document_stories", "Stories in the pipeline document", registry=r)
        self.doc_malformed = Gauge("huskies_document_malformed", "Malformed story entries skipped",
                                   registry=r)
        self.doc_bytes = Gauge("huskies_document_bytes", "Encoded size of the pipeline document", registry=r)
        self.claim_to_job = Histogram(
            "huskies_claim_to_job_seconds", "Story seen claimable until its Job exists",
            buckets=LATENCY_BUCKETS, registry=r)
        self.lost_to_deleted = Histogram(
            "huskies_lost_to_deleted_seconds", "Claim loss seen until the Job is deleted",
            buckets=LATENCY_BUCKETS, registry=r)
        self.job_duration = Histogram(
            "huskies_job_duration_seconds", "Story Job run time", ["result"], buckets=DURATION_BUCKETS,
            registry=r)
        self.agent_cost = Counter(
            "huskies_agent_cost_usd", "What finished runs cost (the runner's cost_usd), by story stage",
            ["stage"], registry=r)
        self.agent_turns = Histogram(
            "huskies_agent_turns", "Agent turns of finished runs, by story stage", ["stage"],
            buckets=TURN_BUCKETS, registry=r)
        self.bad_costs = Counter(
            "huskies_agent_bad_cost_results", "Run results whose cost_usd was not a finite number >= 0 (ignored)",
            registry=r)
        self.claiming_paused = Gauge(
            "huskies_agent_claiming_paused",
            "1 while this node claims nothing, by reason (agent-auth, agent-unavailable, daily-budget)",
            ["reason"], registry=r)

        self.claim_to_running = Histogram(
            "huskies_claim_to_running_seconds",
            "Claim confirmed until the run's pod is Running (scheduling, autoscaling, image pull)",
            buckets=STARTUP_BUCKETS, registry=r)
        self.max_concurrent = Gauge("huskies_max_concurrent", "Stories this node runs at most at once (configured)",
                                    registry=r)
        self.warm_slots = Gauge("huskies_warm_slots",
                                "Warm build slots (placeholder pods) of this node: ready (on a node) or waiting",
                                ["state"], registry=r)
        self.waiting = Gauge("huskies_stories_waiting",
                             "Claimable stories this node passed over for lack of room", registry=r)
        self.stories = Gauge("huskies_stories", "Stories in the pipeline document by stage and blocked flag",
                             ["stage", "blocked"], registry=r)
        self.api_errors = Counter("huskies_api_errors_total",
                                  "Kubernetes API calls answered with an error, by verb and HTTP code",
                                  ["verb", "code"], registry=r)
        self.build_info = Gauge("huskies_build_info", "Always 1; the version of this operator", ["version"],
                                registry=r)
        self.build_info.labels(__version__).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r, platform=None)

    def lead(self) -> None:
        """This replica became the leader: from now on it exports the rendezvous connection gauges."""
        self.leader.set(1)
        if not self._leading:
            self._leading = True
            self.registry.register(self.connected)
            self.registry.register(self.synced)

    def api_error(self, verb: str, code: int | str) -> None:
        """Count one failed Kubernetes API call (the ``Kube`` client's error hook); ``code`` is the
        HTTP status, or ``connection`` when no answer came."""
        self.api_errors.labels(verb.upper(), str(code)).inc()

    def set_stories(self, stages: Iterable[tuple[str, bool]]) -> None:
        """Replace the ``huskies_stories`` samples with a count of (stage, blocked) pairs."""
        counts = Tally(stages)
        self.stories.clear()  # no await in between: a scrape never sees the series missing
        for (stage, blocked), n in sorted(counts.items()):
            self.stories.labels(stage, "true" if blocked else "false").set(n)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
