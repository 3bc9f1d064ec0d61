"""The fenced push: a run's commit lands only over its own lease or over a lower claim epoch's tip."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from huskies_agent.runner.git import EPOCH_TRAILER, INSPECT_REF, Git, PushStatus
from huskies_agent.runner.result import RunnerError

log = logging.getLogger("huskies_agent.runner")

#: How often a push is retried after overwriting a stale (lower-epoch) tip moved again.
MAX_PUSH_ATTEMPTS = 3


@dataclass(frozen=True)
class PushReport:
    status: str  # "pushed", "fenced", "rejected", "failed"
    message: str
    #: The stale tip that was overwritten ("" when none).
    overwrote: str = ""


def fenced_push(git: Git, repo: Path, branch: str, source: str, expected: str, epoch: int) -> PushReport:
    """Push ``source`` to ``branch`` only over ``expected`` or over a tip of a lower claim epoch."""
    repo_path = repo
    overwrote = ""
    for _attempt in range(MAX_PUSH_ATTEMPTS):
        outcome = git.push_with_lease(repo_path, branch, expected, source)
        if outcome.status is PushStatus.OK:
            return PushReport("pushed", "", overwrote)
        if outcome.status is PushStatus.FAILED:
            return PushReport("failed", f"push to the remote failed: {outcome.reason}")
        try:
            tip = git.remote_tip(branch)
        except RunnerError as exc:
            return PushReport("failed", f"push rejected ({outcome.reason}), then {exc.message}")
        if tip == expected:
            return PushReport("rejected", f"the remote rejected the push of {branch}: {outcome.reason}")
        if not tip:
            return PushReport(
                "fenced", f"{branch} was deleted on the remote while this run worked; not recreating it"
            )
        try:
            tip = git.fetch_branch(repo_path, branch, INSPECT_REF, depth=1)
        except RunnerError as exc:
            return PushReport("failed", f"the branch moved and its new tip could not be fetched: {exc.message}")
        theirs = git.claim_epoch_of(repo_path, tip)
        if theirs is not None and theirs < epoch:
            log.warning(
                "%s moved to %s, pushed under the older claim epoch %d (ours %d); overwriting it",
                branch, tip[:12], theirs, epoch,
            )
            expected = overwrote = tip
            continue
        shown = "no " + EPOCH_TRAILER + " trailer" if theirs is None else f"claim epoch {theirs}"
        return PushReport(
            "fenced",
            f"fenced: {branch} moved on the remote to {tip[:12]} ({shown}; this run has epoch {epoch}); "
            "the remote was left untouched",
        )
    return PushReport("fenced", f"fenced: {branch} kept moving on the remote; the remote was left untouched")
