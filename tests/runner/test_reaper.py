"""The runner kills what the agent detached, and nothing of its own (huskies_agent.runner.reaper)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from runner_helpers import process_gone

from huskies_agent.runner import agent, redact
from huskies_agent.runner.reaper import descendants


@pytest.mark.parametrize(
    ("parents", "exclude", "expected"),
    [
        ({2: 1, 3: 2, 4: 3, 5: 1}, (), {2, 3, 4, 5}),
        ({2: 1, 3: 2, 4: 3, 5: 1}, (2,), {5}),  # the runner's own child (e.g. a git daemon) and its tree
        ({2: 1, 3: 9, 4: 3}, (), {2}),  # not below the root
        ({2: 1, 3: 2, 2_000: 3}, (), {2, 3, 2_000}),
        ({2: 1, 3: 2, 1: 3}, (), {2, 3}),  # a cycle back to the root (pids reused mid-read) ends
        ({}, (), set()),
    ],
)
def test_descendants(parents: dict[int, int], exclude: tuple[int, ...], expected: set[int]) -> None:
    assert set(descendants(1, parents, exclude)) == expected


def test_run_agent_kills_a_detached_process_and_spares_the_runners_own(tmp_path: Path) -> None:
    own = subprocess.Popen(["sleep", "120"])  # started before the agent: the runner's, not the agent's
    pidfile = tmp_path / "detached.pid"
    script = tmp_path / "agent.sh"
    # Double fork + setsid: out of the agent's process group and session, orphaned at once.
    script.write_text(f"(setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' </dev/null >/dev/null 2>&1 &)\n"
                      f"while [ ! -s {pidfile} ]; do sleep 0.05; done\n"
                      "echo '{\"type\": \"result\", \"is_error\": false, \"num_turns\": 1}'\n")
    try:
        outcome = agent.run_agent(["sh", str(script)], prompt="", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                                  timeout=30, redactor=redact.Redactor([]), sink=io.StringIO())
        assert outcome.succeeded
        assert outcome.leftovers_killed >= 1
        assert process_gone(int(pidfile.read_text()))
        assert own.poll() is None
    finally:
        own.kill()
        own.wait(10)
