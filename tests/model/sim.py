"""A simulated pipeline for the claim protocol model test, over the real document code.

Every node has its own :class:`PipelineDoc`, :class:`claims.Liveness`, monotonic clock
and skewed wall clock; a hub (the rendezvous, its own PipelineDoc) relays updates over
per-node links that can be cut and healed. Nodes follow docs/claims.md: they write only
while linked and synced, decide with ``claims.decide``/``choose_claims``, start a run only
after a confirm round trip (begun at least one delivery bound after the claim was
written) shows the claim still wins, stop a run when ownership is lost, and push to a
per-story branch with the epoch fence. The recorder checks invariants I1-I6 (issue 10).

A stand-in is used only for what cannot run here: the network (in-memory queues), git
(a branch of push records) and the agent's work (numbered work units).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from huskies_agent import claims
from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.pipeline.model import NodePresence, Story

TIMEOUT = 60.0
#: Each time step advances at most this much; every linked node writes presence and
#: every linked queue is delivered at each step (the bound on delivery latency).
STEP = 10.0
SPREAD = 5.0
MAX_RETRIES = 3
STAGE_ORDER = {stage: index for index, stage in enumerate(stages.ALL_STAGES)}


class Violation(AssertionError):
    """An invariant of docs/claims.md does not hold."""


def check(condition: bool, invariant: str, message: str) -> None:
    if not condition:
        raise Violation(f"{invariant}: {message}")


# ---------------------------------------------------------------------------- git stand-in
@dataclass(frozen=True)
class Push:
    epoch: int
    run: int
    units: frozenset[int]


@dataclass
class Branch:
    """``feature/story-<id>`` with the runner's fence: a push lands over a tip of a lower
    epoch or over this run's own last push, never over another run's push of the same or
    a higher epoch."""

    tip: Push | None = None
    landed: list[Push] = field(default_factory=list)

    def push(self, run: Run) -> bool:
        tip = self.tip
        if tip is not None and tip.epoch >= run.epoch and tip.run != run.run_id:
            return False
        content = Push(run.epoch, run.run_id, frozenset(run.base | run.units))
        if tip is not None:
            # I6: a lower epoch never overwrites a higher one; a taker keeps what it resumed.
            check(tip.epoch <= run.epoch, "I6", f"epoch {run.epoch} overwrote epoch {tip.epoch}")
        self.tip = content
        self.landed.append(content)
        runs_at_epoch = {p.run for p in self.landed if p.epoch == run.epoch}
        check(len(runs_at_epoch) == 1, "I6", f"pushes of runs {sorted(runs_at_epoch)} landed at epoch {run.epoch}")
        return True


@dataclass
class Run:
    run_id: int
    node: str
    story_id: str
    epoch: int
    stage: str
    base: frozenset[int]
    units: set[int] = field(default_factory=set)


@dataclass
class Pending:
    epoch: int
    stage: str
    written_at: float


@dataclass
class Result:
    kind: str  # "complete" | "fail" | "release"
    run: Run


# ---------------------------------------------------------------------------- nodes and hub
class SimNode:
    def __init__(self, world: World, node_id: str, mono_offset: float, skew: float, slots: int) -> None:
        self.world = world
        self.id = node_id
        self.doc = PipelineDoc()
        self.liveness = claims.Liveness(TIMEOUT)
        self.mono_offset = mono_offset
        self.skew = skew
        self.slots = slots
        self.linked = False
        self.linked_since: float | None = None
        self.link_up_mono: float | None = None
        self.outbox: list[bytes] = []
        self.inbox: list[bytes] = []
        self.pending: dict[str, Pending] = {}
        self.runs: dict[str, Run] = {}
        self.results: list[Result] = []
        self.claimable_since: dict[str, float] = {}
        #: Oracle for I5: when this node received a change of each other node's presence.
        self.received: dict[str, float] = {}
        self.doc.observe_updates(self._on_update)
        self.doc.add_listener(self._on_changes)

    # clocks: only durations of the monotonic clock are meaningful
    def mono(self) -> float:
        return self.world.now + self.mono_offset

    def wall(self) -> float:
        return self.world.now + self.skew

    def _on_update(self, update: bytes, remote: bool) -> None:
        if remote:
            return
        check(self.linked, "I4", f"{self.id} wrote to its document while cut off")
        self.outbox.append(update)

    def _on_changes(self, changes: object) -> None:
        if getattr(changes, "remote", False):
            for node in getattr(changes, "nodes", frozenset()) - {self.id}:
                self.liveness.heard(node, self.mono())
                self.received[node] = self.mono()

    def is_dead(self, node: str) -> bool:
        return self.liveness.is_dead(node, self.mono())

    def write_presence(self) -> None:
        if self.linked:
            free = max(0, self.slots - len(self.runs) - len(self.pending))
            # A forged or skewed wall clock is written on purpose: nobody may read it (I5).
            self.doc.put_presence(NodePresence(node_id=self.id, last_seen=self.wall(), capacity=free))


class Hub:
    def __init__(self, world: World) -> None:
        self.world = world
        self.doc = PipelineDoc()
        self.up = True
        self.source: str | None = None
        self.doc.observe_updates(self._relay)

    def _relay(self, update: bytes, remote: bool) -> None:
        for node in self.world.nodes.values():
            if node.linked and node.id != self.source:
                node.inbox.append(update)


# ---------------------------------------------------------------------------- the world
class World:
    def __init__(self, node_count: int, story_count: int, *, skews: Iterable[float] = (), slots: int = 2) -> None:
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.hub = Hub(self)
        self.hub.doc.add_stories({"story_id": f"{i + 1}_story", "stage": stages.CURRENT} for i in range(story_count))
        self.branches: dict[str, Branch] = {}
        self.run_ids = itertools.count(1)
        self.unit_ids = itertools.count(1)
        self.human_ids = itertools.count(1)
        self.humans: set[str] = set()
        #: (story, epoch, node) -> (from stage, to stage) of each completion written.
        self.completions: dict[tuple[str, int, str], tuple[str, str]] = {}
        self.started: set[tuple[str, int, str]] = set()
        self.stops: list[tuple[str, str, str]] = []
        #: What happened, for the test's statistics (coverage of the interesting paths).
        self.events: Counter[str] = Counter()
        #: Last resolved stage entry per (doc, story), for I1.
        self.seen_stage: dict[tuple[str, str], tuple[int, bool, str, str]] = {}
        #: Stages each replica advanced a story from since the last move by a person, for I2.
        self.advanced: dict[tuple[str, str], set[str]] = {}
        skew_list = list(skews)
        for index in range(node_count):
            node_id = f"node-{chr(ord('a') + index)}"
            skew = skew_list[index] if index < len(skew_list) else 0.0
            self.nodes[node_id] = SimNode(self, node_id, mono_offset=1000.0 * (index + 1) ** 2, skew=skew,
                                          slots=slots)
        for node in self.nodes.values():
            self.heal(node.id)
        self.deliver_all()
        self.check_all()

    # ----------------------------------------------------------------- links
    def flush_up(self, node: SimNode) -> None:
        if not node.linked:
            return
        updates, node.outbox = node.outbox, []
        for update in updates:
            self.hub.source = node.id
            try:
                self.hub.doc.apply_remote(update)
            finally:
                self.hub.source = None

    def flush_down(self, node: SimNode) -> None:
        if not node.linked:
            return
        updates, node.inbox = node.inbox, []
        for update in updates:
            node.doc.apply_remote(update)
        self.after_receive(node)

    def cut(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.linked = False
        node.linked_since = None
        node.link_up_mono = None
        node.inbox.clear()  # the hub side of the connection is gone; heal re-syncs
        node.liveness.link_down()

    def heal(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.linked or not self.hub.up:
            return
        # Exchange state vectors both ways; then the link is synced.
        ours = node.doc.encode_update(self.hub.doc.state_vector())
        self.hub.source = node.id
        try:
            self.hub.doc.apply_remote(ours)
        finally:
            self.hub.source = None
        node.outbox.clear()
        node.doc.apply_remote(self.hub.doc.encode_update(node.doc.state_vector()))
        node.linked = True
        node.linked_since = self.now
        node.link_up_mono = node.mono()
        node.liveness.link_up(node.mono())
        self.after_receive(node)
        node.write_presence()
        self.retry_results(node)

    def restart_hub(self) -> None:
        self.events["rendezvous restart"] += 1
        for node_id in self.nodes:
            self.cut(node_id)
        self.hub.up = False

    def hub_back(self) -> None:
        self.hub.up = True

    # ----------------------------------------------------------------- time
    def advance(self, seconds: float) -> None:
        remaining = seconds
        while remaining > 0:
            step = min(STEP, remaining)
            remaining -= step
            self.now += step
            for node in self.nodes.values():
                node.write_presence()
            self.deliver_all()

    def deliver_all(self) -> None:
        for _ in range(3):
            for node in self.nodes.values():
                self.flush_up(node)
            for node in self.nodes.values():
                self.flush_down(node)

    # ----------------------------------------------------------------- node behaviour
    def step(self, node_id: str) -> None:
        """One engine turn: write pending results, then claim what the policy chooses."""
        node = self.nodes[node_id]
        if not node.linked:
            return  # I4: nothing is written while cut off; it waits for the link
        self.retry_results(node)
        stories = node.doc.stories
        mono = node.mono()
        candidates = [s for sid, s in stories.items() if sid not in node.runs and sid not in node.pending]
        for story in candidates:
            wants = claims.decide(story, me=node.id, stories=stories, is_dead=node.is_dead).wants_claim
            if wants:
                node.claimable_since.setdefault(story.story_id, mono)
            else:
                node.claimable_since.pop(story.story_id, None)
        choice = claims.choose_claims(
            candidates, me=node.id, stories=stories, is_dead=node.is_dead,
            capacities={n: p.capacity or 0 for n, p in node.doc.nodes.items()},
            busy=len(node.runs) + len(node.pending), max_concurrent=node.slots,
            waited=lambda sid: mono - node.claimable_since.get(sid, mono), spread_delay=SPREAD)
        for story in choice.now:
            holder = story.claimed_by
            if holder:
                self.check_takeover(node, story, holder)
                self.events["takeover"] += 1
        written = node.doc.claim_many([s.story_id for s in choice.now], node.id, node.wall())
        for sid, claim in written.items():
            node.pending[sid] = Pending(claim.epoch, claim.stage, self.now)
            node.claimable_since.pop(sid, None)
        stuck = [sid for sid, s in node.doc.stories.items()
                 if s.claimed_by == node.id and sid not in node.runs and sid not in node.pending]
        check(not stuck, "progress", f"{node.id} holds claims with no run or pending start: {stuck}")

    def check_takeover(self, node: SimNode, story: Story, holder: str) -> None:
        other = self.nodes.get(holder)
        live = other is not None and other.linked and other.linked_since is not None and other.linked_since < self.now
        check(not live, "I3", f"{node.id} took over {story.story_id} from live node {holder} at t={self.now}")

    def confirm(self, node_id: str) -> None:
        """A confirm round trip; start the runs of claims that settled and still win."""
        node = self.nodes[node_id]
        if not node.linked:
            return
        self.flush_up(node)
        self.flush_down(node)
        for sid, pending in list(node.pending.items()):
            story = node.doc.story(sid)
            own = claims.check_ownership(story, me=node.id, epoch=pending.epoch, stage=pending.stage)
            if not own.keep:
                del node.pending[sid]  # lost the race or fenced: nothing ran, nothing to release
                continue
            if self.now <= pending.written_at:
                continue  # not settled: a concurrent claim may still be on its way
            del node.pending[sid]
            key = (sid, pending.epoch, node.id)
            check(key not in self.started, "I6", f"claim {key} started a second run")
            self.started.add(key)
            self.events["run started"] += 1
            tip = self.branches.setdefault(sid, Branch()).tip
            node.runs[sid] = Run(next(self.run_ids), node.id, sid, pending.epoch, pending.stage,
                                 base=tip.units if tip else frozenset())

    def after_receive(self, node: SimNode) -> None:
        """Stop the runs whose claim this node no longer holds (after a checkpoint push)."""
        for sid, run in list(node.runs.items()):
            story = node.doc.story(sid)
            own = claims.check_ownership(story, me=node.id, epoch=run.epoch, stage=run.stage)
            if not own.keep:
                self.branches.setdefault(sid, Branch()).push(run)  # SIGTERM checkpoint (may be fenced)
                del node.runs[sid]
                self.events["run stopped: ownership lost"] += 1
                self.check_stop_cause(node, run, story)
                self.stops.append((node.id, sid, own.reason))

    def check_stop_cause(self, node: SimNode, run: Run, story: Story | None) -> None:
        """I3: a run stops only for a person's move, a legitimate takeover or a claim race."""
        assert story is not None
        if story.stage_epoch >= run.epoch:
            check(story.moved_by in self.humans or (story.story_id, story.stage_epoch, story.moved_by)
                  in self.completions, "I3", f"run {run} stopped by an unexplained stage move")
            return
        winner = max(story.claims, key=lambda c: c.order)
        check(winner.order > (run.epoch, node.id), "I3", f"run {run} stopped while its claim wins")

    def work(self, node_id: str, sid: str) -> None:
        run = self.nodes[node_id].runs.get(sid)
        if run is not None:
            run.units.add(next(self.unit_ids))

    def checkpoint(self, node_id: str, sid: str) -> None:
        node = self.nodes[node_id]
        run = node.runs.get(sid)
        if run is None:
            return
        if not self.branches.setdefault(sid, Branch()).push(run):
            self.events["checkpoint fenced"] += 1
            del node.runs[sid]  # fenced: a newer claim owns the branch; the run stops
            node.results.append(Result("release", run))
            self.retry_results(node)

    def finish(self, node_id: str, sid: str, success: bool) -> None:
        """The run's Job ends (also while cut off: the Job does not need the rendezvous)."""
        node = self.nodes[node_id]
        run = node.runs.pop(sid, None)
        if run is None:
            return
        landed = self.branches.setdefault(sid, Branch()).push(run)
        self.events[f"run finished {'ok' if success else 'failed'}{'' if landed else ', push fenced'}"] += 1
        if not node.linked:
            self.events["run finished while cut off"] += 1
        kind = "release" if not landed else ("complete" if success else "fail")
        node.results.append(Result(kind, run))
        self.retry_results(node)

    def retry_results(self, node: SimNode) -> None:
        if not node.linked:
            return  # I4: waits (with backoff in the engine) until linked again
        results, node.results = node.results, []
        for result in results:
            run = result.run
            if result.kind == "complete":
                before = node.doc.story(run.story_id)
                new_stage = node.doc.complete(run.story_id, node.id, run.epoch, run.stage, node.wall())
                if new_stage is not None:
                    assert before is not None
                    self.check_advance_once(run, new_stage)
                    self.completions[(run.story_id, run.epoch, node.id)] = (run.stage, new_stage)
                    self.events["stage advanced"] += 1
                else:
                    self.events["completion refused (claim lost)"] += 1
            elif result.kind == "fail":
                node.doc.record_failure(run.story_id, node.id, run.epoch, run.stage, node.wall(),
                                        reason="agent failed", max_retries=MAX_RETRIES)
            else:
                node.doc.release(run.story_id, node.id, node.wall())

    def check_advance_once(self, run: Run, new_stage: str) -> None:
        """I1: a completion advances the run's own stage to the next one, never further."""
        check(new_stage == stages.next_stage(run.stage), "I1", f"{run} advanced to {new_stage}")

    # ----------------------------------------------------------------- people
    def human_move(self, sid: str, stage: str) -> None:
        if not self.hub.up or self.hub.doc.story(sid) is None:
            return
        writer = f"cli-{next(self.human_ids)}"
        self.humans.add(writer)
        self.hub.doc.move(sid, stage, writer=writer)
        self.events["person moved a story"] += 1

    def human_unblock(self, sid: str) -> None:
        story = self.hub.doc.story(sid)
        if not self.hub.up or story is None or not story.blocked:
            return
        writer = f"cli-{next(self.human_ids)}"
        self.humans.add(writer)
        self.hub.doc.set_blocked(sid, False, reset_retries=True, writer=writer)

    # ----------------------------------------------------------------- invariants after each step
    def check_all(self) -> None:
        docs = {"hub": self.hub.doc, **{n.id: n.doc for n in self.nodes.values()}}
        for name, doc in docs.items():
            check(not doc.malformed, "doc", f"{name} has malformed stories {dict(doc.malformed)}")
            for story in doc.stories.values():
                self.check_stage_entry(name, story)
        for node in self.nodes.values():
            self.check_liveness(node)

    def check_stage_entry(self, doc_name: str, story: Story) -> None:
        """I1: the resolved stage entry only grows; a node's entry is backed by its succeeded run."""
        human = story.moved_by in self.humans
        entry = (story.stage_epoch, human, story.moved_by, story.stage)
        key = (doc_name, story.story_id)
        previous = self.seen_stage.get(key)
        self.seen_stage[key] = entry
        if previous is None or previous == entry:
            return
        check(entry[:3] > previous[:3], "I1", f"{doc_name}: {story.story_id} stage entry went back "
              f"from {previous} to {entry}")
        if human:
            self.advanced[key] = set()
            return
        done = self.completions.get((story.story_id, story.stage_epoch, story.moved_by))
        check(done is not None and done[1] == story.stage, "I1",
              f"{doc_name}: {story.story_id} moved to {story.stage} by {story.moved_by} at epoch "
              f"{story.stage_epoch} without a succeeded run of the stage before it")
        assert done is not None
        # I2: in each replica a stage is advanced from at most once per generation of moves
        # by people (a later completion of a redone stage does not advance it again).
        if previous[3] != story.stage:
            advanced = self.advanced.setdefault(key, set())
            check(done[0] not in advanced, "I2", f"{doc_name}: {story.story_id} advanced from {done[0]} twice")
            advanced.add(done[0])
        check(STAGE_ORDER[story.stage] > STAGE_ORDER[previous[3]] or previous[1], "I1",
              f"{doc_name}: a node moved {story.story_id} back from {previous[3]} to {story.stage}")

    def check_liveness(self, node: SimNode) -> None:
        """I5: verdicts follow only what this node received, on its own monotonic clock."""
        mono = node.mono()
        for other in self.nodes:
            if other == node.id:
                continue
            if not node.linked or node.link_up_mono is None:
                expected = False
            else:
                since = max(node.link_up_mono, node.received.get(other, float("-inf")))
                expected = mono - since >= TIMEOUT
            check(node.liveness.is_dead(other, mono) == expected, "I5",
                  f"{node.id} judges {other} {'dead' if not expected else 'alive'} against what it received")
