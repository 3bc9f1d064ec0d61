"""Helpers of bench_operator.py: the operator's start timings from its JSON log, per-process
CPU, percentiles and the breakdown tables it prints."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

#: The steps of a claim, in order, as the engine logs them (engine/timing.py), after the
#: benchmark's own write (``write``) and before the benchmark's watch sees the Job (``seen``).
START_STEPS = ("write", "heard", "decided", "written", "confirmed", "slot", "storyjob", "job", "seen")
STEP_NAMES = {
    "heard": "sync hop: write -> update applied in the operator",
    "decided": "dispatch: applied -> claim decided",
    "written": "claim written to the document",
    "confirmed": "claim confirmed by the rendezvous",
    "slot": "waiting for a create slot",
    "storyjob": "StoryJob create",
    "job": "Job create",
    "seen": "Job create -> the benchmark's watch sees it",
}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def log_records(path: Path, message_start: str) -> dict[str, dict[str, float]]:
    """``story id -> {t_<step>: monotonic seconds}`` from the JSON lines starting with ``message_start``."""
    found: dict[str, dict[str, float]] = {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("msg", "")).startswith(message_start) and "story" in record:
            found[str(record["story"])] = {k[2:]: float(v) for k, v in record.items()
                                           if k.startswith("t_") and isinstance(v, int | float)}
    return found


def breakdown(stories: Iterable[str], written: Mapping[str, float], seen: Mapping[str, float],
              logged: Mapping[str, Mapping[str, float]], steps: tuple[str, ...] = START_STEPS) -> list[str]:
    """Lines of a per-step table: p50/p99/max in ms of each step's share, over the stories that have it."""
    per_step: dict[str, list[float]] = {step: [] for step in steps[1:]}
    for sid in stories:
        times = {"write": written.get(sid), "seen": seen.get(sid), **logged.get(sid, {})}
        previous = times.get(steps[0])
        for step in steps[1:]:
            now = times.get(step)
            if now is not None and previous is not None:
                per_step[step].append(now - previous)
            if now is not None:
                previous = now
    lines = []
    for step, values in per_step.items():
        if values:
            lines.append(f"    {STEP_NAMES.get(step, step):<48} p50 {pct(values, 50) * 1000:7.1f} ms  "
                         f"p99 {pct(values, 99) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms  (n={len(values)})")
    return lines


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CpuMeter:
    """CPU seconds each named process used between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {name: self._cpu(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: self._cpu(pid) - self.before.get(name, 0.0) for name, pid in self.pids.items()}

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            return cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            return 0.0


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"
