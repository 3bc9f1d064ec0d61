"""The development process supervisor against real child processes."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from huskies_agent_dev.proc import Proc

SLEEPER = "import time; print('read' + 'y', flush=True); time.sleep(60)"
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('read' + 'y', flush=True); "
            "time.sleep(60)")


def wait_for_output(proc: Proc, text: str) -> None:
    for _ in range(200):
        if text in proc.log():
            return
        proc.wait_or_none(0.05)
    raise AssertionError(f"{proc.name} never printed {text!r}: {proc.log()}")


def test_stop_terminates_and_frames_the_log(tmp_path: Path) -> None:
    proc = Proc("sleeper", [sys.executable, "-c", SLEEPER], tmp_path).start()
    wait_for_output(proc, "ready")
    assert proc.alive and proc.pid is not None
    proc.stop(timeout=10)
    assert not proc.alive
    assert proc.returncode == -signal.SIGTERM
    log = proc.log()
    assert "started:" in log and "ready" in log and f"stopped (exit {-signal.SIGTERM})" in log


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    proc = Proc("stubborn", [sys.executable, "-c", STUBBORN], tmp_path).start()
    wait_for_output(proc, "ready")
    proc.stop(timeout=0.5)
    assert proc.returncode == -signal.SIGKILL


def test_restart_appends_to_the_same_log_and_env_reaches_the_child(tmp_path: Path) -> None:
    code = "import os; print('value=' + os.environ['HUSKIES_PROC_TEST'])"
    proc = Proc("echo", [sys.executable, "-c", code], tmp_path, {"HUSKIES_PROC_TEST": "42"})
    for _ in range(2):
        proc.start()
        assert proc.wait(10) == 0
    assert proc.poll() == 0
    assert proc.log().count("value=42") == 2
    proc.stop()  # already ended: only records it
    assert "stopped (exit 0)" in proc.log()
