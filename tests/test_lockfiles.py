"""The hash-pinned lock files the images install from match pyproject.toml (regenerate: ``make lock``).

``requirements/runtime.lock`` pins ``[project].dependencies`` and everything they need,
``requirements/build.lock`` pins ``[build-system].requires``; the Dockerfile installs both with
``pip install --require-hashes --no-deps`` and the package itself with ``--no-deps --no-index``,
so nothing outside the locks is resolved or downloaded when an image is built.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = {"runtime": ROOT / "requirements" / "runtime.lock", "build": ROOT / "requirements" / "build.lock"}
DIRECT = {
    "runtime": [Requirement(r) for r in PYPROJECT["project"]["dependencies"]],
    "build": [Requirement(r) for r in PYPROJECT["build-system"]["requires"]],
}
SOURCE = {"runtime": "huskies-agent (pyproject.toml)", "build": "huskies-agent (pyproject.toml::build-system.requires)"}


@dataclass
class Pin:
    name: str
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def parse_lock(text: str) -> dict[str, Pin]:
    """pip-compile's output: ``name==version \\`` then ``--hash=sha256:...`` lines, then ``# via`` lines."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        head = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)(\s*;[^\\]*)?\s*\\?", line)
        if head and not raw.startswith(" "):
            current = Pin(canonicalize_name(head.group(1)), head.group(2))
            assert current.name not in pins, f"{current.name} pinned twice"
            pins[current.name] = current
            in_via = False
            continue
        if line.startswith("--hash="):
            assert current is not None, f"a hash before any pin: {line}"
            current.hashes.append(line.removeprefix("--hash=").rstrip(" \\"))
            continue
        if line.startswith("#"):
            comment = line.lstrip("#").strip()
            if current is not None and comment.startswith("via"):
                rest = comment.removeprefix("via").strip()
                in_via = not rest
                if rest:
                    current.via.append(rest)
            elif current is not None and in_via and comment:
                current.via.append(comment)
            continue
        raise AssertionError(f"unexpected line in a lock file (an index, a URL, an editable?): {raw!r}")
    return pins


@pytest.fixture(scope="module", params=sorted(LOCKS))
def lock(request: pytest.FixtureRequest) -> tuple[str, dict[str, Pin]]:
    kind = str(request.param)
    return kind, parse_lock(LOCKS[kind].read_text())


def test_every_pin_is_exact_and_hashed(lock: tuple[str, dict[str, Pin]]) -> None:
    kind, pins = lock
    assert pins, f"{kind}.lock pins nothing"
    for pin in pins.values():
        assert re.fullmatch(r"\d+(\.\d+)*([a-z0-9.+-]*)?", pin.version), f"{pin.name}=={pin.version}"
        assert pin.hashes, f"{pin.name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin.name


def test_the_lock_pins_exactly_pyprojects_dependencies(lock: tuple[str, dict[str, Pin]]) -> None:
    """Each dependency of pyproject.toml is pinned inside its range; nothing else is a direct pin."""
    kind, pins = lock
    for requirement in DIRECT[kind]:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is in pyproject.toml but not in {kind}.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), (
            f"{kind}.lock pins {name}=={pins[name].version}, outside pyproject's {requirement}: run `make lock`")
    direct = {canonicalize_name(r.name) for r in DIRECT[kind]}
    marked = {name for name, pin in pins.items() if SOURCE[kind] in pin.via}
    assert marked == direct, f"{kind}.lock was made from other dependencies than pyproject.toml's: run `make lock`"


def test_every_pin_is_needed(lock: tuple[str, dict[str, Pin]]) -> None:
    """Each pin is required by pyproject.toml or by another pin (no stale leftovers)."""
    kind, pins = lock
    for pin in pins.values():
        assert pin.via, f"{pin.name} says nothing about why it is pinned"
        for reason in pin.via:
            assert reason == SOURCE[kind] or canonicalize_name(reason) in pins, f"{pin.name} via unknown {reason!r}"


def test_runtime_and_build_locks_do_not_disagree() -> None:
    runtime, build = (parse_lock(LOCKS[k].read_text()) for k in ("runtime", "build"))
    for name in set(runtime) & set(build):
        assert runtime[name].version == build[name].version, f"{name} is pinned twice at different versions"


def test_parser_reads_pip_compile_output() -> None:
    pins = parse_lock(
        "# header\n\nfoo-bar==1.2 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via\n    #   baz\n"
        "    #   huskies-agent (pyproject.toml)\nbaz==3.0.1 \\\n    --hash=sha256:" + "b" * 64 + "\n    # via foo\n"
    )
    assert pins["foo-bar"].via == ["baz", "huskies-agent (pyproject.toml)"] and pins["baz"].version == "3.0.1"
    with pytest.raises(AssertionError, match="unexpected line"):
        parse_lock("--index-url https://example.invalid/simple\n")
