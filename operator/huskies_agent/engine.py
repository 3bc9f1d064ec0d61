"""The build node's control loop: pipeline changes in, StoryJobs and Jobs out.

One engine runs in the replica that holds the leader Lease. It reacts to document
changes as they arrive (no polling for the fast path), confirms each claim with the
rendezvous before creating anything, deletes a Job the moment its claim is lost, and
turns finished Jobs into stage moves or counted failures. A periodic resync repairs
anything an event missed, takes work over from dead nodes and cleans up.

Kubernetes watch events reach the engine through the kopf handlers in ``handlers.py``.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from huskies_agent import claims
from huskies_agent.contract import ExitCode
from huskies_agent.k8s import objects
from huskies_agent.k8s.api import ApiException, Kube, is_conflict, is_not_found
from huskies_agent.metrics import Metrics
from huskies_agent.pipeline import stages
from huskies_agent.pipeline.document import Changes, PipelineDoc
from huskies_agent.pipeline.model import NodePresence, Story
from huskies_agent.settings import Settings

log = logging.getLogger(__name__)

FINAL_PHASES = frozenset({"Succeeded", "Failed", "Lost", "Cancelled"})


class Replicator(Protocol):
    """What the engine needs of the rendezvous sync (``sync.client.RendezvousClient``)."""

    @property
    def connected(self) -> bool: ...

    async def wait_synced(self, timeout: float | None = None) -> None: ...

    async def confirm(self, timeout: float) -> bool: ...


@dataclass
class Run:
    """A story this node is running (or starting) at one claim epoch."""

    spec: objects.RunSpec
    phase: str = "Pending"
    started_mono: float = field(default_factory=time.monotonic)
    storyjob: dict[str, Any] | None = None
    job_created: bool = False
    pod_seen: bool = False
    stuck_since: dict[str, float] = field(default_factory=dict)
    stuck_reason: str = ""
    finishing: bool = False
    #: Status writes of one run are serialised and never go back: a late "Pending"
    #: never overwrites "Running", nor either of them a final phase.
    status_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    written_rank: int = -1


class Engine:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        doc: PipelineDoc,
        sync: Replicator,
        node_id: str,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.doc = doc
        self.sync = sync
        self.me = node_id
        self.metrics = metrics
        self.clock = clock
        self.runs: dict[str, Run] = {}
        self.claiming: set[str] = set()
        self.cooldown: dict[str, float] = {}
        self.active = False
        #: Set once adoption is done and the engine reacts to changes.
        self.activated = asyncio.Event()
        self._dirty: set[str] = set()
        self._waiting: set[str] = set()
        self._wake = asyncio.Event()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Creating Jobs is the latency that matters; status patches and Events queue behind it.
        self._create_slots = asyncio.Semaphore(32)
        self._followup_slots = asyncio.Semaphore(4)
        # Claim protocol v2 (docs/claims.md): liveness from received presence changes only.
        self.liveness = claims.Liveness(settings.claim_timeout_seconds)
        self._remove_listener = doc.add_listener(self._on_changes)

    # ------------------------------------------------------------------ wiring
    def _on_changes(self, changes: Changes) -> None:
        # Runs inside a pycrdt callback: no document writes here, just schedule work.
        if changes.remote:
            for node in changes.nodes - {self.me}:
                self.liveness.heard(node, time.monotonic())
        if changes.nodes and not changes.stories:
            return
        self._dirty.update(changes.stories)
        self._wake.set()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    @property
    def busy(self) -> int:
        return len(self.runs) + len(self.claiming)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Start (after this replica became leader) and run until cancelled."""
        self.write_presence()
        log.info("waiting for the first sync with the rendezvous")
        sync_started = time.monotonic()
        while True:
            try:
                await self.sync.wait_synced(timeout=30)
                break
            except TimeoutError:
                log.warning("rendezvous not synced yet (connected=%s); still waiting", self.sync.connected)
        self.metrics.initial_sync.set(time.monotonic() - sync_started)
        self.liveness.link_up(time.monotonic())
        self.metrics.doc_stories.set(len(self.doc.stories))
        delay = 0.5
        while True:
            try:
                await self.adopt()
                break
            except Exception as exc:
                # 429 "storage is (re)initializing", 5xx, a flaky network: try again.
                log.warning("adoption failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
        self.active = True
        self.activated.set()
        self._dirty.update(self.doc.stories)
        self._wake.set()
        log.info("engine active: node %s, %d stories in the pipeline", self.me, len(self.doc.stories))
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._dispatch_loop(), name="dispatch")
                tg.create_task(self._periodic_loop(), name="resync")
                tg.create_task(self._presence_loop(), name="presence")
        finally:
            self.active = False
            for task in list(self._tasks):
                task.cancel()
            self._remove_listener()

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                self.reconcile(dirty)
            except Exception:
                log.exception("reconcile failed; the next resync retries")

    async def _periodic_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval_seconds)
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic resync failed")

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.presence_interval_seconds)
            self.write_presence()

    def write_presence(self) -> None:
        free = max(0, self.settings.max_concurrent - self.busy)
        self.doc.put_presence(NodePresence(
            node_id=self.me, last_seen=self.clock(), alive=True,
            address=self.settings.advertise_address, capacity=free,
            extra={"cluster": self.settings.cluster_name, "running": len(self.runs)},
        ))

    # ------------------------------------------------------------------ decisions
    def reconcile(self, story_ids: Iterable[str]) -> None:
        """React to changed stories: stop lost runs, start claims, resume our own claims."""
        now = self.clock()
        stories = self.doc.stories
        candidates: list[Story] = []
        for sid in story_ids:
            story = stories.get(sid)
            run = self.runs.get(sid)
            if run is not None:
                own = claims.check_ownership(story, me=self.me, epoch=run.spec.epoch, stage=run.spec.stage)
                if not own.keep and not run.finishing:
                    lost_phase = "Cancelled" if story is None or story.stage in stages.FINISHED_STAGES else "Lost"
                    # Still ours but moved or finished by someone else: free the claim as well.
                    ours = story is not None and story.claimed_by == self.me
                    self._spawn(self.stop_run(sid, own.reason, phase=lost_phase, seen=time.monotonic(),
                                              release=ours), f"stop:{sid}")
                continue
            if story is None or sid in self.claiming:
                continue
            if story.claimed_by == self.me and stages.is_active(story.stage) and not story.blocked:
                # Our claim without a run (restart between claim and Job, or a takeover
                # written by this node earlier): run it at that epoch.
                if self.busy < self.settings.max_concurrent:
                    self.claiming.add(sid)
                    self._spawn(self._resume_claim(story), f"resume:{sid}")
                continue
            candidates.append(story)
        if not candidates:
            return
        cooling = {sid for sid, until in self.cooldown.items() if until > now}
        chosen = claims.choose_claims(
            candidates, me=self.me, stories=stories, is_dead=self._is_dead,
            capacities={n: p.capacity or 0 for n, p in self.doc.nodes.items()}, busy=self.busy,
            max_concurrent=self.settings.max_concurrent, cooling=cooling,
            waited=lambda _sid: 0.0, spread_delay=0.0,
        ).now
        ids = {s.story_id for s in chosen}
        # Remember stories passed over for lack of room, to look at again when room frees up.
        self._waiting.update(s.story_id for s in candidates
                             if s.story_id not in ids and stages.is_active(s.stage) and not s.blocked)
        if chosen:
            self.claiming.update(ids)
            self._spawn(self._claim_batch(chosen, time.monotonic()), f"claim:{len(ids)}")

    def _is_dead(self, node: str) -> bool:
        return self.liveness.is_dead(node, time.monotonic())

    async def _claim_batch(self, chosen: list[Story], seen: float) -> None:
        ids = [s.story_id for s in chosen]
        try:
            # The decision was made a loop turn ago: updates applied since (a live node's
            # fresh claim, a removal) must win. No await between this check and the write.
            now = self.clock()
            chosen = [
                current for s in chosen
                if (current := self.doc.story(s.story_id)) is not None
                and claims.decide(current, me=self.me, stories=self.doc.stories, is_dead=self._is_dead).wants_claim
            ]
            if not chosen:
                return
            for s in chosen:
                if s.claimed_by:
                    log.info("taking over story %s from dead node %s", s.story_id, s.claimed_by)
                    self.metrics.claims.labels("taken_over").inc()
            written = self.doc.claim_many([s.story_id for s in chosen], self.me, now)
            confirmed = await self.sync.confirm(self.settings.confirm_timeout_seconds)
            if not confirmed:
                log.warning("rendezvous did not confirm claims of %d stories; releasing them", len(ids))
                self.metrics.claims.labels("unconfirmed").inc(len(written))
                for sid in written:
                    self.doc.release(sid, self.me, self.clock())
                return
            if self.settings.claim_settle_seconds:
                await asyncio.sleep(self.settings.claim_settle_seconds)
            starts = []
            for sid, claim in written.items():
                story = self.doc.story(sid)
                stage = story.stage if story else ""
                own = claims.check_ownership(story, me=self.me, epoch=claim.epoch, stage=stage)
                if not own.keep:
                    log.info("claim on %s lost before start: %s", sid, own.reason)
                    self.metrics.claims.labels("lost").inc()
                    continue
                self.metrics.claims.labels("won").inc()
                starts.append(objects.RunSpec(sid, stage, self.me, claim.epoch))
            await asyncio.gather(*(self.start_run(spec, seen) for spec in starts))
        finally:
            self.claiming.difference_update(ids)
        self._after_capacity_change()

    async def _resume_claim(self, story: Story) -> None:
        try:
            await self.start_run(objects.RunSpec(story.story_id, story.stage, self.me, story.epoch),
                                 time.monotonic())
        finally:
            self.claiming.discard(story.story_id)

    def _after_capacity_change(self) -> None:
        """Capacity freed or claims settled: look again at the stories that had to wait."""
        if self.busy < self.settings.max_concurrent and self._waiting:
            self._dirty.update(self._waiting)
            self._waiting.clear()
            self._wake.set()

    # ------------------------------------------------------------------ starting
    async def start_run(self, spec: objects.RunSpec, seen: float) -> None:
        """Create the StoryJob and its Job (idempotent by name) for a confirmed claim."""
        sid = spec.story_id
        async with self._locks[sid], self._create_slots:
            if sid in self.runs:
                return
            run = Run(spec=spec, started_mono=seen)
            self.runs[sid] = run
            try:
                try:
                    sj = await self.kube.create_storyjob(objects.build_storyjob(self.settings, spec))
                except ApiException as exc:
                    if not is_conflict(exc):
                        raise
                    sj = await self.kube.get_storyjob(spec.name)
                    earlier = (sj.get("status") or {}).get("phase")
                    if earlier in FINAL_PHASES:
                        # This claim already ran to the end (we crashed before the document
                        # heard of it): apply its outcome instead of running the story again.
                        self.runs.pop(sid, None)
                        self._settle_finished_claim(spec, earlier)
                        return
                run.storyjob = sj
                uid = (sj.get("metadata") or {}).get("uid")
                try:
                    await self.kube.create_job(objects.build_job(self.settings, spec, uid))
                    self.metrics.jobs_created.inc()
                except ApiException as exc:
                    if not is_conflict(exc):
                        raise
                run.job_created = True
                self.metrics.claim_to_job.observe(time.monotonic() - seen)
            except Exception as exc:
                # Quota, a bad build setting (4xx) or a flaky API: give the story back, and
                # for a 4xx do not try it here again soon (others may have room).
                log.error("could not start story %s: %s", sid, exc)
                self.runs.pop(sid, None)
                self.doc.release(sid, self.me, self.clock())
                client_error = isinstance(exc, ApiException) and 400 <= exc.status < 500
                self.cooldown[sid] = self.clock() + (self.settings.pending_timeout_seconds if client_error else 30)
                if run.storyjob is not None:
                    why = exc.message if isinstance(exc, ApiException) else str(exc)
                    await self._patch_run_status(run, {"phase": "Failed", "reason": f"job not created: {why}"[:300],
                                                       "finishedAt": _iso(self.clock())})
                return
        log.info("started story %s (stage %s, epoch %d) as job %s", sid, spec.stage, spec.epoch, spec.name)
        self._spawn(self._after_start(run), f"started:{sid}")
        # The claim may have been lost while we were creating objects.
        self._dirty.add(sid)
        self._wake.set()

    def _settle_finished_claim(self, spec: objects.RunSpec, phase: str) -> None:
        now = self.clock()
        if phase == "Succeeded":
            moved = self.doc.complete(spec.story_id, self.me, spec.epoch, spec.stage, now)
            log.info("story %s: claim %d had already succeeded; moved to %s", spec.story_id, spec.epoch, moved)
        else:
            self.doc.release(spec.story_id, self.me, now)
            log.info("story %s: claim %d had already ended %s; released", spec.story_id, spec.epoch, phase)

    async def _after_start(self, run: Run) -> None:
        assert run.storyjob is not None
        started = _iso(self.clock())
        async with self._followup_slots:
            await self._patch_run_status(run, {"phase": "Pending", "jobName": run.spec.name, "startedAt": started})
            await self.kube.post_event(
                run.storyjob, reason="Claimed",
                message=f"node {self.me} claimed story {run.spec.story_id} ({run.spec.stage}, epoch "
                        f"{run.spec.epoch}) and created job {run.spec.name}")

    # ------------------------------------------------------------------ stopping
    async def stop_run(self, sid: str, reason: str, *, phase: str = "Lost", seen: float | None = None,
                       release: bool = False, cooldown: float = 0.0, warning: bool = True) -> None:
        """Delete the run's Job at once and record why on its StoryJob."""
        async with self._locks[sid]:
            run = self.runs.get(sid)
            if run is None or run.finishing:
                return
            run.finishing = True
            try:
                await self.kube.delete_job(run.spec.name)
            except Exception as exc:
                # The next resync sees the run again and retries.
                log.error("could not delete job %s: %s", run.spec.name, exc)
                run.finishing = False
                return
            if seen is not None:
                self.metrics.lost_to_deleted.observe(time.monotonic() - seen)
            self.metrics.jobs_deleted.labels(phase.lower()).inc()
            if release:
                self.doc.release(sid, self.me, self.clock())
            if cooldown:
                self.cooldown[sid] = self.clock() + cooldown
            self.runs.pop(sid, None)
        log.warning("stopped story %s (job %s): %s", sid, run.spec.name, reason)
        await self._patch_run_status(run, {"phase": phase, "reason": reason[:300],
                                                 "finishedAt": _iso(self.clock())})
        if run.storyjob:
            await self.kube.post_event(run.storyjob, reason="ClaimLost" if phase == "Lost" else phase,
                                       message=f"job {run.spec.name} deleted: {reason}", warning=warning)
        self._after_capacity_change()

    # ------------------------------------------------------------------ Kubernetes events
    async def on_job_event(self, event_type: str, job: Mapping[str, Any]) -> None:
        if not self.active:
            return
        spec = objects.run_spec_from_object(job)
        if spec is None or spec.node != self.me:
            return
        run = self.runs.get(spec.story_id)
        if run is None or run.spec.epoch != spec.epoch:
            return
        if event_type == "DELETED":
            await self._job_gone(run)
            return
        condition = objects.job_condition(job)
        if condition is not None:
            await self.finish_run(run, job, condition)
        elif ((job.get("status") or {}).get("active") or 0) > 0 and run.phase == "Pending":
            run.phase = "Running"
            async with self._followup_slots:
                await self._patch_run_status(run, {"phase": "Running", "jobName": spec.name})

    async def _job_gone(self, run: Run) -> None:
        """Someone deleted the Job (or its StoryJob): give the story back untouched."""
        sid = run.spec.story_id
        async with self._locks[sid]:
            if self.runs.get(sid) is not run or run.finishing:
                return
            self.runs.pop(sid, None)
            self.doc.release(sid, self.me, self.clock())
            self.cooldown[sid] = self.clock() + 30
        await self._patch_run_status(run, {"phase": "Cancelled", "reason": "job deleted",
                                           "finishedAt": _iso(self.clock())})
        self._after_capacity_change()

    async def _check_jobs(self) -> None:
        """Safety net for missed watch events: finish or drop runs by their Jobs' state."""
        # Only runs whose Job existed before the list started can be judged by the list.
        candidates = [run for run in self.runs.values() if run.job_created and not run.finishing]
        try:
            jobs = {j["metadata"]["name"]: j for j in await self.kube.list_jobs(
                objects.selector_for_instance(self.settings))}
        except Exception as exc:
            log.warning("could not list jobs for the resync: %s", exc)
            return
        for run in candidates:
            if self.runs.get(run.spec.story_id) is not run or run.finishing:
                continue
            job = jobs.get(run.spec.name)
            if job is None:
                await self._job_gone(run)
            elif (condition := objects.job_condition(job)) is not None:
                await self.finish_run(run, job, condition)

    async def on_pod_event(self, event_type: str, pod: Mapping[str, Any]) -> None:
        if not self.active or event_type == "DELETED":
            return
        spec = objects.run_spec_from_object(pod)
        if spec is None:
            return
        run = self.runs.get(spec.story_id)
        if run is None or run.spec.epoch != spec.epoch or run.finishing:
            return
        run.pod_seen = True
        disrupted = objects.pod_was_disrupted(pod)
        if disrupted:
            # Evicted, drained or preempted: hand the story off now, not after the dead-node timeout.
            self.metrics.claims.labels("released").inc()
            await self.stop_run(spec.story_id, f"pod disrupted ({disrupted}); claim released for another node",
                                phase="Failed", release=True)
            return
        stuck = objects.pod_stuck_reason(pod)
        if stuck is None:
            run.stuck_since.clear()
            run.stuck_reason = ""
            return
        kind, reason = stuck
        run.stuck_since.setdefault(kind, time.monotonic())
        run.stuck_reason = reason

    async def finish_run(self, run: Run, job: Mapping[str, Any], condition: str) -> None:
        sid = run.spec.story_id
        async with self._locks[sid]:
            if self.runs.get(sid) is not run or run.finishing:
                return
            run.finishing = True
            try:
                pods = await self.kube.list_pods(f"job-name={run.spec.name}")
            except Exception as exc:
                log.warning("could not read the pods of finished job %s (%s); retrying at the next resync",
                            run.spec.name, exc)
                run.finishing = False
                return
            exit_code, message = None, ""
            disrupted = None
            for pod in pods:
                code, msg = objects.pod_termination(pod)
                if code is not None:
                    exit_code, message = code, msg
                disrupted = disrupted or objects.pod_was_disrupted(pod)
            result = objects.parse_result(message)
            now = self.clock()
            status: dict[str, Any] = {"finishedAt": _iso(now)}
            if result:
                status["result"] = result
                status["commit"] = str(result.get("commit") or "")
                status["pushed"] = bool(result.get("pushed"))
            if condition == "Complete":
                new_stage = self.doc.complete(sid, self.me, run.spec.epoch, run.spec.stage, now)
                status.update(phase="Succeeded",
                              reason=f"advanced to {new_stage}" if new_stage else "claim no longer ours")
                event_reason, warning = "Succeeded", False
                message_text = f"story {sid} finished {run.spec.stage}" + (
                    f"; moved to {new_stage}" if new_stage else "; the claim was no longer ours")
            elif exit_code == ExitCode.FENCED:
                # A newer claim's run pushed first: this run was stale, not a failure of the story.
                self.doc.release(sid, self.me, now)
                status.update(phase="Lost", reason="push fenced: a newer claim owns the branch")
                event_reason, warning = "Fenced", True
                message_text = f"story {sid}: push fenced by a newer claim; nothing counted"
            elif disrupted or exit_code == ExitCode.TERMINATED:
                why = disrupted or "runner terminated"
                self.doc.release(sid, self.me, now)
                status.update(phase="Failed", reason=f"disrupted ({why}); released")
                event_reason, warning = "Disrupted", True
                message_text = f"pod of story {sid} was disrupted ({why}); claim released"
            else:
                why = str(result.get("error") or "") or objects.job_failure_reason(job)
                if exit_code is not None:
                    why = f"exit code {exit_code}: {why}"
                counted = self.doc.record_failure(sid, self.me, run.spec.epoch, run.spec.stage, now, reason=why,
                                                  max_retries=self.settings.max_retries)
                retries, blocked = counted if counted else (None, False)
                status.update(phase="Failed", reason=why[:300])
                event_reason, warning = ("Blocked" if blocked else "Failed"), True
                message_text = f"story {sid} failed ({why[:200]})" + (
                    f"; retry {retries} of {self.settings.max_retries}" if retries else "") + (
                    "; story blocked" if blocked else "")
            self.runs.pop(sid, None)
        result_label = status["phase"].lower()
        self.metrics.jobs_finished.labels(result_label).inc()
        self.metrics.job_duration.labels(result_label).observe(time.monotonic() - run.started_mono)
        log.info("story %s: %s", sid, message_text)
        confirmed = await self.sync.confirm(self.settings.confirm_timeout_seconds)
        if not confirmed:
            log.warning("rendezvous has not confirmed the result of %s yet; it syncs on reconnect", sid)
        await self._patch_run_status(run, status)
        if run.storyjob:
            await self.kube.post_event(run.storyjob, reason=event_reason, message=message_text, warning=warning)
        self._after_capacity_change()

    # ------------------------------------------------------------------ restart / adoption
    async def adopt(self) -> None:
        """After a restart or failover: keep what is still ours, delete what is not."""
        selector = objects.selector_for_instance(self.settings)
        storyjobs = await self.kube.list_storyjobs(selector)
        jobs = {j["metadata"]["name"]: j for j in await self.kube.list_jobs(selector)}
        adopted = deleted = 0
        for sj in storyjobs:
            spec = objects.run_spec_from_object(sj)
            if spec is None or spec.node != self.me:
                continue
            phase = (sj.get("status") or {}).get("phase") or "Pending"
            job = jobs.get(spec.name)
            if phase in FINAL_PHASES:
                continue
            story = self.doc.story(spec.story_id)
            own = claims.check_ownership(story, me=self.me, epoch=spec.epoch, stage=spec.stage)
            current = self.runs.get(spec.story_id)
            if current is not None and current.spec.epoch >= spec.epoch:
                continue  # adopted by an earlier attempt of this adoption
            if own.keep:
                run = Run(spec=spec, phase=phase, storyjob=sj, job_created=job is not None)
                self.runs[spec.story_id] = run
                adopted += 1
                if job is None:
                    self.runs.pop(spec.story_id)
                    await self.start_run(spec, time.monotonic())
                elif (cond := objects.job_condition(job)) is not None:
                    self._spawn(self.finish_run(run, job, cond), f"finish:{spec.story_id}")
                continue
            if job is not None and objects.job_condition(job) is None:
                await self.kube.delete_job(spec.name)
                deleted += 1
            await self._patch_status(spec.name, {"phase": "Lost", "reason": f"after restart: {own.reason}",
                                                 "finishedAt": _iso(self.clock())})
        log.info("adoption: %d runs adopted, %d stale jobs deleted", adopted, deleted)

    # ------------------------------------------------------------------ periodic work
    async def resync(self) -> None:
        now = self.clock()
        stories = self.doc.stories
        self.metrics.doc_stories.set(len(stories))
        self.metrics.doc_malformed.set(len(self.doc.malformed))
        self.cooldown = {k: v for k, v in self.cooldown.items() if v > now}
        for sid in [k for k, lock in self._locks.items() if not lock.locked() and k not in self.runs]:
            del self._locks[sid]
        # Nobody releases another node's claim (claim protocol v2): work held by dead
        # nodes is taken over by reconcile below with a higher epoch of our own.
        if self.sync.connected:
            self.liveness.link_up(time.monotonic())
        else:
            self.liveness.link_down()
        self._dirty.update(stories)
        self._dirty.update(self.runs)
        self._wake.set()
        await self._check_jobs()
        await self._check_stuck()
        await self._cleanup_finished(now)
        phases: dict[str, int] = defaultdict(int)
        for run in self.runs.values():
            phases[run.phase] += 1
        for phase in ("Pending", "Running"):
            self.metrics.storyjobs.labels(phase).set(phases.get(phase, 0))

    async def _check_stuck(self) -> None:
        s = self.settings
        mono = time.monotonic()
        limits = {"image": s.image_pull_timeout_seconds, "config": s.image_pull_timeout_seconds,
                  "unschedulable": s.pending_timeout_seconds}
        for sid, run in list(self.runs.items()):
            if run.finishing or not run.job_created:
                continue
            for kind, since in list(run.stuck_since.items()):
                if mono - since > limits[kind]:
                    await self.stop_run(sid, f"cannot start ({run.stuck_reason}); claim released",
                                        phase="Failed", release=True, cooldown=s.pending_timeout_seconds)
                    break
            else:
                if not run.pod_seen and mono - run.started_mono > s.no_pod_timeout_seconds:
                    pods = await self.kube.list_pods(f"job-name={run.spec.name}")
                    if pods:
                        run.pod_seen = True
                        for pod in pods:
                            await self.on_pod_event("MODIFIED", pod)
                    else:
                        await self.stop_run(sid, "the job got no pod (missing ServiceAccount, quota?); "
                                            "claim released", phase="Failed", release=True,
                                            cooldown=s.pending_timeout_seconds)

    async def _cleanup_finished(self, now: float) -> None:
        selector = objects.selector_for_instance(self.settings)
        try:
            storyjobs = await self.kube.list_storyjobs(selector)
        except ApiException as exc:
            log.warning("could not list storyjobs for clean-up: %s", exc.reason)
            return
        for sj in storyjobs:
            status = sj.get("status") or {}
            if status.get("phase") not in FINAL_PHASES:
                continue
            finished = _parse_iso(status.get("finishedAt"))
            if finished is not None and now - finished > self.settings.finished_ttl_seconds:
                try:
                    await self.kube.delete_storyjob(sj["metadata"]["name"])
                except ApiException as exc:
                    if not is_not_found(exc):
                        log.warning("could not delete storyjob %s: %s", sj["metadata"]["name"], exc.reason)

    async def _patch_run_status(self, run: Run, status: Mapping[str, Any]) -> None:
        phase = str(status.get("phase") or "")
        rank = 2 if phase in FINAL_PHASES else {"Pending": 0, "Running": 1}.get(phase, 0)
        async with run.status_lock:
            if rank < run.written_rank or (rank == 2 and run.written_rank == 2):
                return
            run.written_rank = rank
            await self._patch_status(run.spec.name, status)

    async def _patch_status(self, name: str, status: Mapping[str, Any], *, missing_ok: bool = True) -> None:
        try:
            await self.kube.patch_storyjob_status(name, status)
        except ApiException as exc:
            if not (missing_ok and exc.status == 404):
                log.warning("could not update storyjob %s status: %s", name, exc.reason)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _parse_iso(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None
