"""The story runner: what a build Job's container runs (``huskies-agent run-story``).

One run clones the project, works one story with the Claude Code CLI and pushes the
story's branch, fenced by the claim epoch. See ``docs/runner.md`` for the contract
and :mod:`huskies_agent.runner.result` for the exit codes.
"""
