"""Locate what the real-run tier needs, built by the repository's scripts into ~/.cache.

``tools/images/build.sh``   both Dockerfile targets as OCI archives plus ``images.json``;
``tools/registry/build.sh`` go-containerregistry's ``crane`` (its ``registry serve`` is the registry);
``tools/node/build.sh``     the real node's kubelet and sandbox image.

Like the control-plane binaries: outside CI a missing artifact skips the test (the scripts are run
with ``--cached-only``); under ``$CI`` the script is run (cached by a hash of its inputs) and a failed
build is an error naming the step (the script's stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = ROOT / "tools" / "images" / "build.sh"
REGISTRY_SCRIPT = ROOT / "tools" / "registry" / "build.sh"
NODE_SCRIPT = ROOT / "tools" / "node" / "build.sh"
_NOT_BUILT = 3


class BuildFailed(RuntimeError):
    """A build script failed; its stderr (already on ours) names the step."""


def run_build_script(script: Path, *, build: bool) -> Path | None:
    """The directory a build script prints last; None when ``build`` is off and it is not cached."""
    argv = ["bash", str(script)] + ([] if build else ["--cached-only"])
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode == _NOT_BUILT and not build:
        return None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise BuildFailed(f"{script} failed (exit {proc.returncode}); its stderr names the failing step")
    return Path(lines[-1].strip())


def artifact_dir(script: Path) -> Path:
    """Build under $CI, else use the cached result or skip the test."""
    found = run_build_script(script, build=bool(os.environ.get("CI")))
    if found is None:
        pytest.skip(f"not built: run `bash {script.relative_to(ROOT)}` (or `make test`)")
    return found


@dataclass(frozen=True)
class BuiltImage:
    target: str
    archive: Path
    archive_bytes: int
    size: str  # uncompressed, as buildah reports it ("286 MB")

    @property
    def size_mb(self) -> float:
        number, unit = self.size.split()
        scale = {"B": 1e-6, "kB": 1e-3, "KB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]
        return float(number) * scale


@dataclass(frozen=True)
class BuiltImages:
    directory: Path
    key: str
    base: str
    debian_version: str
    operator: BuiltImage
    runner: BuiltImage
    #: The digest of the locally made base image the build resolved FROM by (tools/images/build.sh).
    base_digest: str = ""


def load_images(directory: Path) -> BuiltImages:
    meta = json.loads((directory / "images.json").read_text())

    def image(target: str) -> BuiltImage:
        entry = meta[target]
        return BuiltImage(target, directory / entry["archive"], int(entry["archive_bytes"]), entry["size"])

    return BuiltImages(
        directory, meta["key"], meta["base"], meta["debian_version"], image("operator"), image("runner"),
        meta.get("base_digest", ""),
    )
