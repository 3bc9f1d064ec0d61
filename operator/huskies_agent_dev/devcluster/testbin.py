"""Locate (or build) the control-plane binaries made by ``tools/testbin/build.sh``.

Order of precedence:

1. ``$HUSKIES_TESTBIN`` — a directory holding the binaries; used as is.
2. The source checkout's ``tools/testbin/build.sh``: with ``build=True`` it is run (idempotent and
   cheap when everything is cached; fails loudly naming the step otherwise) and its last stdout line
   is the directory. With ``build=False`` the script's cache key is recomputed here and the
   directory is used only if it already holds every binary.
3. Without a checkout (an installed package): the newest directory under
   ``${XDG_CACHE_HOME:-~/.cache}/huskies-agent/testbin/`` that holds every binary.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "APISERVER_BINARIES",
    "CLUSTER_BINARIES",
    "TestbinNotFound",
    "find_testbin",
    "missing_binaries",
    "repo_root",
]

APISERVER_BINARIES: tuple[str, ...] = ("etcd", "kube-apiserver")
CLUSTER_BINARIES: tuple[str, ...] = APISERVER_BINARIES + ("kube-controller-manager", "kube-scheduler", "kwok")


class TestbinNotFound(RuntimeError):
    """The binaries are not there (or could not be built)."""

    __test__ = False  # not a pytest test class despite the name


def repo_root() -> Path | None:
    """The source checkout this package is imported from, if any (it has tools/testbin/build.sh)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "tools" / "testbin" / "build.sh").is_file():
            return parent
    return None


def missing_binaries(bin_dir: Path, names: Iterable[str] = CLUSTER_BINARIES) -> list[str]:
    return [n for n in names if not os.access(bin_dir / n, os.X_OK)]


def find_testbin(*, build: bool = False, need: Iterable[str] = CLUSTER_BINARIES) -> Path:
    """Return the directory with the binaries named in ``need``; raise :class:`TestbinNotFound`."""
    need = tuple(need)
    override = os.environ.get("HUSKIES_TESTBIN")
    if override:
        return _checked(Path(override).expanduser().resolve(), need, "$HUSKIES_TESTBIN")

    root = repo_root()
    if root is not None:
        script = root / "tools" / "testbin" / "build.sh"
        if build:
            return _checked(_run_build(script), need, str(script))
        candidate = _cache_root() / _cache_key(script.parent)
        if not missing_binaries(candidate, need):
            return candidate
        raise TestbinNotFound(
            f"control-plane binaries missing in {candidate}: {', '.join(missing_binaries(candidate, need))}; "
            "build them with `make testbin` (bash tools/testbin/build.sh, ~25 min cold on 2 cores)"
        )

    candidates = sorted(
        (d for d in _cache_root().glob("*") if d.is_dir() and not missing_binaries(d, need)),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    if candidates:
        return candidates[0]
    raise TestbinNotFound(
        f"no directory under {_cache_root()} holds {', '.join(need)}; set HUSKIES_TESTBIN to a "
        "directory with the binaries, or run tools/testbin/build.sh from a source checkout"
    )


def _checked(bin_dir: Path, need: tuple[str, ...], origin: str) -> Path:
    missing = missing_binaries(bin_dir, need)
    if missing:
        raise TestbinNotFound(f"{origin}: {bin_dir} lacks executable {', '.join(missing)}")
    return bin_dir


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "huskies-agent" / "testbin"


def _cache_key(testbin_dir: Path) -> str:
    """Same key as build.sh: sha256 of */go.mod, then */go.sum, then build.sh; first 16 hex digits."""
    h = hashlib.sha256()
    files = sorted(testbin_dir.glob("*/go.mod")) + sorted(testbin_dir.glob("*/go.sum"))
    for f in [*files, testbin_dir / "build.sh"]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _run_build(script: Path) -> Path:
    # stderr (progress and the failing step) goes straight to our stderr; stdout's last line is the dir.
    proc = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise TestbinNotFound(f"{script} failed (exit {proc.returncode}); its stderr above names the failing step")
    return Path(lines[-1].strip())
