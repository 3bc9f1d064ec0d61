"""A real OCI registry on loopback: go-containerregistry's ``crane registry serve``.

Blobs go to a directory of the test (``--disk``); the registry speaks plain HTTP, so clients are
told so (skopeo ``--dest-tls-verify=false``, helm ``--plain-http``). :meth:`Registry.stop` ends the
process, also when a test failed.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PORT_LINE = re.compile(r"serving on port (\d+)")
START_TIMEOUT = 30.0
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


class RegistryError(RuntimeError):
    pass


@dataclass
class Registry:
    crane: Path
    workdir: Path
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def start(self) -> None:
        blobs = self.workdir / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [str(self.crane), "registry", "serve", "--address", "127.0.0.1:0", "--disk", str(blobs)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryError(f"registry exited ({self._proc.returncode}): {self.log_path.read_text()}")
            match = _PORT_LINE.search(self.log_path.read_text())
            if match:
                self.port = int(match.group(1))
                self.get("/v2/")
                return
            time.sleep(0.05)
        raise RegistryError(f"registry did not report its port within {START_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RegistryError(f"registry is not running: {self.log_path.read_text()[-2000:]}")

    # ------------------------------------------------------------------ the distribution API
    def get(self, path: str, accept: str = "application/json") -> tuple[dict[str, str], bytes]:
        request = urllib.request.Request(f"http://{self.host}{path}", headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            return dict(response.headers.items()), response.read()

    def tags(self, repository: str) -> list[str]:
        _headers, body = self.get(f"/v2/{repository}/tags/list")
        tags = json.loads(body).get("tags") or []
        return sorted(str(t) for t in tags)

    def manifest(self, repository: str, reference: str) -> tuple[str, dict[str, Any]]:
        """(digest, manifest) of ``repository:reference``."""
        headers, body = self.get(f"/v2/{repository}/manifests/{reference}", accept=MANIFEST_TYPES)
        digest = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest", "")
        return digest, json.loads(body)

    def blob(self, repository: str, digest: str) -> bytes:
        return self.get(f"/v2/{repository}/blobs/{digest}", accept="*/*")[1]

    # ------------------------------------------------------------------ publishing
    def push_archive(self, archive: Path, repository: str, tag: str) -> str:
        """Copy an OCI archive to ``<host>/<repository>:<tag>`` with skopeo; returns the image ref."""
        ref = f"{self.host}/{repository}:{tag}"
        proc = subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci-archive:{archive}", f"docker://{ref}"],
            capture_output=True, text=True, check=False, timeout=600,
        )
        if proc.returncode != 0:
            raise RegistryError(f"skopeo copy {archive.name} -> {ref} failed: {proc.stderr}")
        return ref
