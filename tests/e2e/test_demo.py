"""The README's run command: the local demo ends with the sample story in 3_qa."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def test_demo_moves_the_sample_story_to_qa(cluster, tmp_path):
    # `cluster` only guarantees the binaries are built; the demo starts its own control plane.
    done = subprocess.run(
        [sys.executable, "-m", "huskies_agent", "--log-format", "text", "demo", "--timeout", "120",
         "--run-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, env={**os.environ}, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "STORY" in out and "PHASE" in out and "1_hello_huskies" in out
    assert "Succeeded" in out and "the story reached 3_qa" in out
