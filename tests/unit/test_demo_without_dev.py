"""From the operator image (no huskies_agent_dev), `huskies-agent demo` says what is missing and the
other commands do not notice."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_DEV = "import sys; sys.modules['huskies_agent_dev'] = None; from huskies_agent.cli import main; "


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_DEV + code], capture_output=True, text=True,
                          check=False, timeout=60)


def test_demo_explains_instead_of_a_traceback() -> None:
    result = run("sys.exit(main(['demo', '--timeout', '1']))")
    assert result.returncode == 2
    assert "needs the development package huskies_agent_dev" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_runtime_commands_load_without_it() -> None:
    result = run("sys.exit(main(['operator', '--help']))")
    assert result.returncode == 0, result.stderr
    assert "--kubeconfig" in result.stdout
