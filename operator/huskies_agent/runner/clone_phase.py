"""Phase ``clone`` (git uid, holds the credentials): fetch the story's start into the private
repository and hand a credential-free copy of it to the agent.

The private repository (state dir) is the only one the publisher ever runs git in; the
seed repository in the workspace has no remote URL, no token and no config of note, and
the agent clones its checkout from it.
"""

from __future__ import annotations

import logging
import shutil

from huskies_agent.runner.config import RunnerConfig
from huskies_agent.runner.git import Git
from huskies_agent.runner.handoff import CloneInfo, State, Workspace, empty_dir, write_record
from huskies_agent.runner.result import ExitCode, RunnerError

log = logging.getLogger("huskies_agent.runner")

#: Refs of the private repository.
START_REF = "refs/huskies/start"
BASE_REF = "refs/huskies/base"


def clone(cfg: RunnerConfig, git: Git, ws: Workspace, st: State) -> CloneInfo:
    """Fill ``st.repo`` and ``ws.seed``; returns (and records in both places) the start."""
    remote = git.ls_remote([cfg.branch, cfg.base_branch])
    depth = cfg.clone_depth if cfg.role == "coder" else 0  # QA and merge need history to diff and merge
    if st.repo.exists():
        empty_dir(st.repo)
    git.init_bare(st.repo)
    resumed = cfg.branch in remote
    if resumed:
        log.info("branch %s exists on the remote at %s; continuing from it", cfg.branch, remote[cfg.branch][:12])
        fork = git.fetch_branch(st.repo, cfg.branch, START_REF, depth=depth)
        start = remote[cfg.branch]
        theirs = git.claim_epoch_of(st.repo, fork)
        if theirs is not None and theirs > cfg.epoch:
            # A newer claim already pushed: this run is stale (its pod started late); a lower
            # epoch never overwrites a higher one, so nothing is run.
            raise RunnerError(
                ExitCode.FENCED,
                f"fenced: {cfg.branch} is at {fork[:12]} of claim epoch {theirs}, newer than this run's "
                f"epoch {cfg.epoch}; nothing was run",
            )
    else:
        if cfg.base_branch not in remote:
            raise RunnerError(
                ExitCode.REMOTE_FAILED,
                f"neither {cfg.branch} nor the base branch {cfg.base_branch} exists on the remote",
            )
        log.info("branch %s does not exist yet; starting it from %s", cfg.branch, cfg.base_branch)
        fork = git.fetch_branch(st.repo, cfg.base_branch, START_REF, depth=depth)
        start = ""
    refspecs = [f"+{START_REF}:refs/heads/{cfg.branch}"]
    base_present = False
    if cfg.role != "coder" and cfg.base_branch != cfg.branch:
        if cfg.base_branch in remote:
            git.fetch_branch(st.repo, cfg.base_branch, BASE_REF, depth=0)
            refspecs.append(f"+{BASE_REF}:refs/heads/{cfg.base_branch}")
            base_present = True
        else:
            log.warning("base branch %s does not exist on the remote; %s works without it",
                        cfg.base_branch, cfg.role)
    info = CloneInfo(start_sha=start, fork_sha=fork, resumed=resumed, base_present=base_present)
    write_record(st.clone_record, info, mode=0o600)

    # Records of an earlier run in a reused workdir must not reach this run's publisher.
    # (In the pod the workspace is fresh; the agent's uid creates out/ itself.)
    if ws.out.is_symlink() or ws.out.is_file():
        ws.out.unlink()
    elif ws.out.exists():
        shutil.rmtree(ws.out)
    empty_dir(ws.handoff, 0o755)
    git.init_bare(ws.seed)
    git.fetch_local(ws.seed, st.repo, refspecs)
    git.local(ws.seed, ["symbolic-ref", "HEAD", f"refs/heads/{cfg.branch}"], "naming the seed's branch")
    write_record(ws.clone_info, info, mode=0o644)
    return info
