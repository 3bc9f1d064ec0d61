"""The two images built from the Dockerfile (tools/images/build.sh): metadata, size budget, and
that they really run: each is unpacked with buildah and its entry point run as the image's user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import CHART
from tests.realrun.artifacts import ROOT, BuiltImage, BuiltImages

pytestmark = pytest.mark.slow

#: Uncompressed size budgets (MB). The runner carries the ~400 MB native Claude Code CLI.
BUDGET_MB = {"operator": 250.0, "runner": 850.0}
SUBCOMMAND = {"operator": "operator", "runner": "run-story"}
RUN_TIMEOUT = 300


def _image(images: BuiltImages, target: str) -> BuiltImage:
    image = images.operator if target == "operator" else images.runner
    assert isinstance(image, BuiltImage)
    return image


def _config(archive: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci-archive:{archive}"],
        capture_output=True, text=True, check=True, timeout=RUN_TIMEOUT,
    ).stdout
    config = json.loads(out)["config"]
    assert isinstance(config, dict)
    return config


class Unpacked:
    """An image unpacked into a private buildah store, to run commands in it (chroot isolation)."""

    def __init__(self, archive: Path, workdir: Path) -> None:
        driver = os.environ.get("HUSKIES_BUILDAH_DRIVER", "overlay")
        self.store = ["--root", str(workdir / "root"), "--runroot", str(workdir / "run"), "--storage-driver", driver]
        self.workdir = workdir
        self.container = self._buildah("from", "--quiet", f"oci-archive:{archive}").strip()

    def _buildah(self, *args: str) -> str:
        proc = subprocess.run(["buildah", *self.store, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT)
        if proc.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc.stdout

    def run(
        self, *argv: str, user: str = "10001:10001", options: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` in the image; ``options`` are more ``buildah run`` options (``--env``, ``--volume``)."""
        return subprocess.run(
            ["buildah", *self.store, "run", "--isolation", "chroot", "--user", user, *options, self.container, "--",
             *argv],
            capture_output=True, text=True, timeout=RUN_TIMEOUT,
        )

    def close(self) -> None:
        subprocess.run(["buildah", *self.store, "rm", "--all"], capture_output=True, timeout=RUN_TIMEOUT)
        subprocess.run(["buildah", *self.store, "rmi", "--all", "--force"], capture_output=True, timeout=RUN_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def unpacked(
    request: pytest.FixtureRequest, built_images: BuiltImages, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Unpacked]]:
    target = str(request.param)
    image = Unpacked(_image(built_images, target).archive, tmp_path_factory.mktemp(f"unpacked-{target}"))
    try:
        yield target, image
    finally:
        image.close()


@pytest.mark.parametrize("target", ["operator", "runner"])
def test_image_size_is_within_budget(built_images: BuiltImages, target: str) -> None:
    image = _image(built_images, target)
    print(f"{target}: {image.size} uncompressed, {image.archive_bytes / 1e6:.0f} MB archive")
    assert image.size_mb <= BUDGET_MB[target], f"{target} is {image.size}, over its {BUDGET_MB[target]} MB budget"


def test_base_is_the_dockerfiles_debian_image(built_images: BuiltImages) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{DEBIAN_BASE\} AS base$", dockerfile, re.MULTILINE)
    base = re.search(r"^ARG DEBIAN_BASE=(\S+)@sha256:[0-9a-f]{64}$", dockerfile, re.MULTILINE)
    assert base and built_images.base == base.group(1)
    # The build resolved FROM by the digest of the base it made, and recorded it.
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", built_images.base_digest), built_images.base_digest
    pinned = re.search(r"debian:(\d+)\.(\d+)", built_images.base)
    assert pinned, built_images.base
    # The locally made base is Debian's current point release of the pinned major version.
    assert built_images.debian_version.split(".")[0] == pinned.group(1)


@pytest.mark.parametrize("target", ["operator", "runner"])
def test_image_config(built_images: BuiltImages, target: str) -> None:
    config = _config(_image(built_images, target).archive)
    version = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "huskies-agent"]
    assert config["Cmd"] == [SUBCOMMAND[target]]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.base.name"] == built_images.base
    for key in ("title", "description", "source", "licenses"):
        assert labels[f"org.opencontainers.image.{key}"], key
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert not [k for k in env if re.search(r"TOKEN|SECRET|API_KEY|PASSW", k)]


@pytest.mark.parametrize("unpacked", ["operator", "runner"], indirect=True)
def test_entrypoint_runs_as_the_image_user(unpacked: tuple[str, Unpacked]) -> None:
    _target, image = unpacked
    proc = image.run("/usr/bin/tini", "--", "huskies-agent", "--version")
    assert proc.returncode == 0, proc.stderr
    assert "0.1.0" in proc.stdout + proc.stderr
    whoami = image.run("id", "-u")
    assert whoami.stdout.strip() == "10001"
    python = image.run("python3", "-c", "import sys; print(sys.version_info[:2])")
    assert python.stdout.strip() == "(3, 11)", python.stderr


@pytest.mark.parametrize("unpacked", ["runner"], indirect=True)
def test_runner_has_the_pinned_cli_and_no_nodejs(unpacked: tuple[str, Unpacked]) -> None:
    _target, image = unpacked
    pinned = re.search(r"^ARG CLAUDE_CODE_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert pinned
    claude = image.run("claude", "--version")
    assert claude.returncode == 0 and claude.stdout.startswith(pinned.group(1)), claude.stdout + claude.stderr
    for tool in ("git", "ssh", "rg"):
        assert image.run("sh", "-c", f"command -v {tool}").returncode == 0, f"{tool} missing"
    # The native CLI needs only glibc: Node.js stays in the build stage.
    assert image.run("sh", "-c", "command -v node || command -v npm").returncode != 0


@pytest.mark.parametrize("unpacked", ["operator"], indirect=True)
def test_the_venv_holds_exactly_the_locked_versions(unpacked: tuple[str, Unpacked]) -> None:
    """What the image installed is requirements/runtime.lock, version for version, plus the package."""
    from packaging.utils import canonicalize_name
    from tests.test_lockfiles import LOCKS, parse_lock

    _target, image = unpacked
    listing = image.run("/opt/venv/bin/python", "-c",
                        "import importlib.metadata as m, json; "
                        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    assert listing.returncode == 0, listing.stderr
    installed = {canonicalize_name(name): version for name, version in json.loads(listing.stdout).items()}
    locked = {name: pin.version for name, pin in parse_lock(LOCKS["runtime"].read_text()).items()}
    assert installed.pop("huskies-agent") == "0.1.0"
    # The build tools (pip, setuptools, wheel) were removed after use.
    assert installed == locked


@pytest.mark.parametrize("unpacked", ["operator"], indirect=True)
def test_admin_cli_in_the_operator_image_reads_the_mounted_settings(
    unpacked: tuple[str, Unpacked], tmp_path: Path,
) -> None:
    """What ``kubectl exec deploy/huskies-agent -- huskies-agent stories list`` runs: the image's CLI with
    the chart's env and its settings and token mounted where the chart mounts them, against a real
    token-protected rendezvous on loopback (chroot isolation shares the host's network)."""
    from tests.helpers.rendezvous import start_rendezvous

    _target, image = unpacked
    with start_rendezvous(tmp_path / "rv", token="img-s3cret") as server:
        config, secret = tmp_path / "config", tmp_path / "secret"
        config.mkdir()
        secret.mkdir()
        (config / "config.yaml").write_text(yaml.safe_dump({"rendezvous_url": server.url}))
        (secret / "token").write_text("img-s3cret\n")
        for path in (config, secret, config / "config.yaml", secret / "token"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        options = [
            "--volume", f"{config}:/etc/huskies-agent:ro",
            # The chart mounts the token under /var/run (= /run); `buildah run` lays its own /run over
            # any mount there, so here the same file is mounted beside the settings.
            "--volume", f"{secret}:/etc/huskies-rendezvous:ro",
            "--env", "HUSKIES_CONFIG=/etc/huskies-agent/config.yaml",
            "--env", "HUSKIES_RENDEZVOUS_TOKEN_FILE=/etc/huskies-rendezvous/token",
        ]
        added = image.run("huskies-agent", "stories", "add", "1_img", "--stage", "2_current", options=options)
        assert added.returncode == 0, added.stdout + added.stderr
        listed = image.run("huskies-agent", "stories", "list", "-o", "json", options=options)
        assert listed.returncode == 0, listed.stderr
        assert [s["id"] for s in json.loads(listed.stdout)["stories"]] == ["1_img"]
        nodes = image.run("huskies-agent", "nodes", "--watch", "0", options=options)
        assert nodes.returncode == 0 and nodes.stdout.startswith("NODE"), nodes.stderr
