"""Prometheus metrics of one operator process (own registry: no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
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
        self.connected = Gauge("huskies_rendezvous_connected", "1 while connected to the rendezvous",
                               registry=r)
        self.synced = Gauge("huskies_rendezvous_synced", "1 once the document is synced", registry=r)
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

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
