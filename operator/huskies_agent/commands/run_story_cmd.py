"""``huskies-agent run-story [clone|agent|publish]``: run one story (or one phase of it) in a build Job.

Every option may also come from its env var (the option wins); the full contract,
the phases, exit codes and result JSON are in ``docs/runner.md``.
"""

from __future__ import annotations

import argparse

from huskies_agent.contract import OPTIONS, Phase

_HELP: dict[str, str] = {
    "story_id": "the story to work on (its full slug)",
    "stage": "2_current (coder), 3_qa (QA) or 4_merge (mergemaster)",
    "repo_url": "git repository to clone and push to",
    "base_branch": "branch a new story branch starts from (main)",
    "epoch": "claim epoch of this run; fences the push",
    "node": "id of the node holding the claim",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "phase", nargs="?", default=Phase.ALL.value, choices=[p.value for p in Phase],
        help="one step of the run, each in its own container (default: all, in one process; no isolation)",
    )
    for flag, dest, env_name in OPTIONS:
        parser.add_argument(flag, dest=dest, default=None, metavar=dest.upper(),
                            help=f"{_HELP[dest]} (env {env_name})")


def run(args: argparse.Namespace) -> int:
    from huskies_agent.runner.run import run_story

    options = {dest: getattr(args, dest, None) for _flag, dest, _env in OPTIONS}
    return run_story(options, phase=Phase(getattr(args, "phase", Phase.ALL.value)))
