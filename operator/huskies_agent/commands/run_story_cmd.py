"""``huskies-agent run-story``: run one story in a build Job's container.

Every option may also come from its env var (the option wins); the full contract,
exit codes and result JSON are in ``docs/runner.md``.
"""

from __future__ import annotations

import argparse

_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--story-id", "story_id", "HUSKIES_STORY_ID", "the story to work on (its full slug)"),
    ("--stage", "stage", "HUSKIES_STAGE", "2_current (coder), 3_qa (QA) or 4_merge (mergemaster)"),
    ("--repo-url", "repo_url", "HUSKIES_REPO_URL", "git repository to clone and push to"),
    ("--base-branch", "base_branch", "HUSKIES_BASE_BRANCH", "branch a new story branch starts from (main)"),
    ("--epoch", "epoch", "HUSKIES_EPOCH", "claim epoch of this run; fences the push"),
    ("--node", "node", "HUSKIES_NODE_ID", "id of the node holding the claim"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    for flag, dest, env_name, help_text in _OPTIONS:
        parser.add_argument(flag, dest=dest, default=None, metavar=dest.upper(),
                            help=f"{help_text} (env {env_name})")


def run(args: argparse.Namespace) -> int:
    from huskies_agent.runner.run import run_story

    options = {dest: getattr(args, dest, None) for _flag, dest, _env, _help in _OPTIONS}
    return run_story(options)
