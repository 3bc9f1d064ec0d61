"""The outcome table: every way a run ends, and what the engine does about it."""

from __future__ import annotations

import pytest

from huskies_agent.contract import NodeHold
from huskies_agent.engine.outcomes import (
    AGENT_EVENTS,
    ClaimLost,
    Disrupted,
    DocAction,
    Finished,
    JobGone,
    Observation,
    StartFailed,
    Stuck,
    Timeouts,
    Written,
    decide,
    describe,
    escalate,
)
from huskies_agent.engine.phases import Phase, StuckKind
from huskies_agent.runner.result import ExitCode

T = Timeouts(stuck_cooldown=900, gone_cooldown=30, start_retry_cooldown=30)

# observation, phase, action, event, counted, delete_job, cooldown
TABLE: list[tuple[Observation, Phase, DocAction, str, bool, bool, float]] = [
    (Finished(True, 0, {"commit": "abc", "pushed": True}), Phase.SUCCEEDED, DocAction.ADVANCE, "Succeeded",
     False, False, 0),
    (Finished(False, ExitCode.AGENT_FAILED, {"error": "agent gave up"}), Phase.FAILED, DocAction.COUNT_FAILURE,
     "Failed", True, False, 0),
    (Finished(False, None, {}, job_reason="BackoffLimitExceeded"), Phase.FAILED, DocAction.COUNT_FAILURE, "Failed",
     True, False, 0),
    (Finished(False, ExitCode.FENCED), Phase.LOST, DocAction.RELEASE, "Fenced", False, False, 0),
    (Finished(False, ExitCode.TERMINATED), Phase.RELEASED, DocAction.RELEASE, "Disrupted", False, False, 0),
    (Finished(False, 137, disrupted="Evicted"), Phase.RELEASED, DocAction.RELEASE, "Disrupted", False, False, 0),
    # Finding 7: a deadline kill (the runner sees SIGTERM) is the story's failure, counted.
    (Finished(False, ExitCode.TERMINATED, job_reason="DeadlineExceeded"), Phase.FAILED, DocAction.COUNT_FAILURE,
     "DeadlineExceeded", True, False, 0),
    (Finished(False, None, job_reason="DeadlineExceeded", job_message="Job was active longer than specified"),
     Phase.FAILED, DocAction.COUNT_FAILURE, "DeadlineExceeded", True, False, 0),
    (Stuck(StuckKind.IMAGE, "ErrImagePull"), Phase.FAILED, DocAction.RELEASE, "Failed", False, True, 900),
    (Stuck(StuckKind.CONFIG, "CreateContainerConfigError"), Phase.FAILED, DocAction.RELEASE, "Failed", False, True,
     900),
    (Stuck(StuckKind.UNSCHEDULABLE, "0/2 nodes"), Phase.FAILED, DocAction.RELEASE, "Failed", False, True, 900),
    (Stuck(StuckKind.NO_POD), Phase.FAILED, DocAction.RELEASE, "Failed", False, True, 900),
    (ClaimLost("claim lost to other"), Phase.LOST, DocAction.NONE, "ClaimLost", False, True, 0),
    (ClaimLost("story moved to 5_done", story_over=True), Phase.CANCELLED, DocAction.NONE, "Cancelled", False,
     True, 0),
    (ClaimLost("story moved from 2_current to 1_backlog", still_ours=True), Phase.LOST, DocAction.RELEASE,
     "ClaimLost", False, True, 0),
    (JobGone(), Phase.CANCELLED, DocAction.RELEASE, "Cancelled", False, False, 30),
    (Disrupted("Evicted"), Phase.RELEASED, DocAction.RELEASE, "Disrupted", False, True, 0),
    (StartFailed("quota", client_error=True), Phase.FAILED, DocAction.RELEASE, "Failed", False, False, 900),
    (StartFailed("timeout"), Phase.FAILED, DocAction.RELEASE, "Failed", False, False, 30),
    # The model API refused the key or was unavailable: not the story's failure (the node holds).
    (Finished(False, ExitCode.AGENT_AUTH, {"error": "401"}), Phase.RELEASED, DocAction.RELEASE, "AgentAuthFailed",
     False, False, 0),
    (Finished(False, ExitCode.AGENT_UNAVAILABLE), Phase.RELEASED, DocAction.RELEASE, "AgentUnavailable", False,
     False, 0),
    (Finished(False, ExitCode.AGENT_BUDGET, {"error": "spent $10"}), Phase.FAILED, DocAction.COUNT_FAILURE,
     "BudgetReached", True, False, 0),
    # A deadline kill stays the story's failure whatever the exit code says.
    (Finished(False, ExitCode.AGENT_AUTH, job_reason="DeadlineExceeded"), Phase.FAILED, DocAction.COUNT_FAILURE,
     "DeadlineExceeded", True, False, 0),
]


@pytest.mark.parametrize(("obs", "phase", "action", "event", "counted", "delete", "cooldown"), TABLE,
                         ids=[type(row[0]).__name__ + f"-{i}" for i, row in enumerate(TABLE)])
def test_outcome_table(obs, phase, action, event, counted, delete, cooldown):
    out = decide(obs, timeouts=T)
    assert (out.phase, out.action, out.event, out.counted, out.delete_job, out.cooldown) == (
        phase, action, event, counted, delete, cooldown)
    assert out.phase.final
    assert out.counted == (out.action is DocAction.COUNT_FAILURE)


@pytest.mark.parametrize(("code", "hold", "reason"), [
    (ExitCode.AGENT_AUTH, NodeHold.CREDENTIALS, "exit code 20: model API refused the key: 401 bad key; claim released"),
    (ExitCode.AGENT_UNAVAILABLE, NodeHold.BACKOFF, "exit code 21: model API unavailable: 401 bad key; claim released"),
    (ExitCode.AGENT_BUDGET, NodeHold.NONE, "exit code 22: budget reached: 401 bad key"),
    (ExitCode.AGENT_FAILED, NodeHold.NONE, "exit code 16: 401 bad key"),
    (ExitCode.TERMINATED, NodeHold.NONE, "disrupted (runner terminated); released"),
])
def test_agent_exit_codes_hold_the_node_and_say_why(code, hold, reason):
    out = decide(Finished(False, code, {"error": "401 bad key"}))
    assert out.hold is hold
    assert out.reason.startswith(reason)


# outcome exit code, uncounted endings before this one, max_retries -> counted, hold
ESCALATE = [
    (ExitCode.AGENT_AUTH, 0, 3, False, NodeHold.CREDENTIALS),
    (ExitCode.AGENT_AUTH, 2, 3, False, NodeHold.CREDENTIALS),
    (ExitCode.AGENT_AUTH, 3, 3, True, NodeHold.NONE),
    (ExitCode.AGENT_UNAVAILABLE, 1, 1, True, NodeHold.NONE),
    (ExitCode.AGENT_UNAVAILABLE, 0, 1, False, NodeHold.BACKOFF),
    (ExitCode.AGENT_BUDGET, 9, 3, True, NodeHold.NONE),  # counted anyway, unchanged
    (ExitCode.TERMINATED, 9, 3, False, NodeHold.NONE),  # no node hold: never escalated
]


@pytest.mark.parametrize(("code", "streak", "max_retries", "counted", "hold"), ESCALATE)
def test_uncounted_agent_endings_are_counted_after_max_retries_in_a_row(code, streak, max_retries, counted, hold):
    before = decide(Finished(False, code))
    out = escalate(before, streak, max_retries)
    assert (out.counted, out.hold) == (counted, hold)
    assert (out.action is DocAction.COUNT_FAILURE) == counted
    if counted and before.hold is not NodeHold.NONE:
        assert out.phase is Phase.FAILED
        assert f"counted: the story ended uncounted this way {streak} times in a row" in out.reason
        assert "not counted" not in out.reason
    if out is before:
        assert not counted or before.counted


def test_the_engine_and_the_runner_share_one_disposition_table():
    from huskies_agent import contract
    from huskies_agent.runner import dispositions

    assert dispositions.TABLE is contract.DISPOSITIONS
    for code, event in AGENT_EVENTS.items():
        rule = contract.disposition(code)
        out = decide(Finished(False, code))
        assert out.event == event
        assert out.hold is rule.hold
        assert out.counted == (rule.action is contract.Action.COUNT)
        assert out.phase.value == rule.phase


def test_success_keeps_the_runner_result_on_the_status():
    out = decide(Finished(True, 0, {"commit": "abc", "pushed": True}))
    assert out.status == {"result": {"commit": "abc", "pushed": True}, "commit": "abc", "pushed": True}
    assert out.warning is False


def test_failure_reason_names_the_exit_code_and_the_runner_error():
    out = decide(Finished(False, ExitCode.AGENT_FAILED, {"error": "agent gave up"}))
    assert out.reason == "exit code 16: agent gave up"
    out = decide(Finished(False, None, {}, job_reason="BackoffLimitExceeded", job_message="too many"))
    assert out.reason == "BackoffLimitExceeded: too many"


def test_describe_counts_and_blocks():
    out = decide(Finished(False, ExitCode.AGENT_FAILED, {"error": "x"}))
    words = describe(out, story_id="1_a", stage="2_current", job="j", written=Written(retries=3, blocked=True),
                     max_retries=3)
    assert words.event == "Blocked"
    assert "retry 3 of 3" in words.message and "story blocked" in words.message


def test_describe_advance_and_stale_advance():
    out = decide(Finished(True, 0))
    assert describe(out, story_id="1_a", stage="2_current", job="j", written=Written(new_stage="3_qa"),
                    max_retries=3).reason == "advanced to 3_qa"
    assert describe(out, story_id="1_a", stage="2_current", job="j", written=Written(),
                    max_retries=3).reason == "claim no longer ours"


def test_phase_parse_and_rank():
    assert Phase.parse("Running") is Phase.RUNNING
    assert Phase.parse("bogus") is None and Phase.parse(None) is None
    assert Phase.PENDING.rank < Phase.RUNNING.rank < Phase.FAILED.rank == Phase.SUCCEEDED.rank


def test_unrecorded_outcomes_from_storyjob_status():
    from huskies_agent.engine.outcomes import unrecorded

    assert unrecorded({"phase": "Succeeded", "action": "advance", "recorded": True}) is None
    assert unrecorded({"phase": "Running", "recorded": False}) is None
    assert unrecorded({"phase": "Lost", "action": "none", "recorded": False}) is None
    failed = unrecorded({"phase": "Failed", "action": "count_failure", "recorded": False, "reason": "boom"})
    assert failed.action is DocAction.COUNT_FAILURE and failed.reason == "boom"
    # Written by a version that did not record outcomes: the write is made again (conditioned).
    assert unrecorded({"phase": "Succeeded"}).action is DocAction.ADVANCE
    assert unrecorded({"phase": "Lost"}).action is DocAction.RELEASE
    assert unrecorded({"phase": "Failed", "action": "bogus", "recorded": False}) is None


def test_the_real_clients_offer_every_call_of_the_ports():
    # mypy checks this where operator_cmd wires them; this keeps it visible next to the fakes.
    import inspect

    from tests.helpers.fakekube import FakeKube

    from huskies_agent.engine.ports import KubeApi, Replicator
    from huskies_agent.k8s.api import Kube
    from huskies_agent.sync.client import RendezvousClient

    for port, impls in ((KubeApi, (Kube, FakeKube)), (Replicator, (RendezvousClient,))):
        calls = [n for n in vars(port) if not n.startswith("_")]
        assert calls
        for impl in impls:
            for name in calls:
                assert hasattr(impl, name), (impl, name)
                if inspect.isfunction(getattr(port, name)):
                    wanted = list(inspect.signature(getattr(port, name)).parameters)
                    assert list(inspect.signature(getattr(impl, name)).parameters)[:len(wanted)] == wanted, (
                        impl, name)


def test_pods_that_cannot_start_are_classified_by_kind():
    from huskies_agent.engine.observe import stuck

    def waiting(reason):
        return {"status": {"containerStatuses": [{"state": {"waiting": {"reason": reason, "message": "m"}}}]}}

    assert stuck(waiting("ImagePullBackOff")) == (StuckKind.IMAGE, "ImagePullBackOff: m")
    assert stuck(waiting("ErrImageNeverPull"))[0] is StuckKind.IMAGE
    assert stuck(waiting("CreateContainerConfigError"))[0] is StuckKind.CONFIG
    unsched = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": "0/2 nodes"}]}}
    assert stuck(unsched) == (StuckKind.UNSCHEDULABLE, "0/2 nodes")
    assert stuck(waiting("ContainerCreating")) is None
    assert stuck({"status": {"phase": "Running"}}) is None
    assert stuck({}) is None
