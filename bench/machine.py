"""What machine a benchmark ran on (every benchmark prints it with its figures)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


def memory_gib() -> float | None:
    try:
        return int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        return None


def describe() -> str:
    """One line: CPU, cores, memory, OS and Python."""
    mem = memory_gib()
    memory = f", {mem:.0f} GiB RAM" if mem is not None else ""
    return (f"{cpu_model()}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")
