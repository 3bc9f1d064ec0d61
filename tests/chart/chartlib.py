"""Shared code of the Helm chart tests: the helm binary (from tools/testbin/build.sh) and rendering.

helm comes from ``$HELM`` or the testbin directory (built by ``tools/testbin/build.sh`` with the
cluster's Kubernetes minor as its default). Without it the tests skip, except under ``$CI`` where
build.sh is run (cached; the control-plane fixtures need it anyway) and a failure is an error.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "huskies-agent"
CI_VALUES = CHART / "ci"
HELM_TIMEOUT = 120


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        env.update(
            HELM_CACHE_HOME=str(self.home / "cache"),
            HELM_CONFIG_HOME=str(self.home / "config"),
            HELM_DATA_HOME=str(self.home / "data"),
        )
        return env

    def run(self, *args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), *args]
        if kubeconfig is not None:
            argv += ["--kubeconfig", str(kubeconfig)]
        proc = subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=HELM_TIMEOUT, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
        return proc

    def template_args(
        self,
        *,
        values: Iterable[Path | str] = (),
        sets: Sequence[str] = (),
        release: str = "huskies-agent",
        namespace: str = "huskies-agent",
        kube_version: str | None = None,
        include_crds: bool = False,
    ) -> list[str]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        for v in values:
            args += ["-f", str(v)]
        for s in sets:
            args += ["--set", s]
        if kube_version:
            args += ["--kube-version", kube_version]
        if include_crds:
            args.append("--include-crds")
        return args

    def render(self, **kwargs: Any) -> list[dict[str, Any]]:
        out = self.run(*self.template_args(**kwargs)).stdout
        return [d for d in yaml.safe_load_all(out) if d]


def find_helm_binary() -> Path:
    override = os.environ.get("HELM")
    if override:
        return Path(override)
    from huskies_agent_dev.devcluster import TestbinNotFound, find_testbin

    if os.environ.get("CI"):
        return find_testbin(build=True, need=("helm",)) / "helm"
    try:
        return find_testbin(need=("helm",)) / "helm"
    except TestbinNotFound as exc:
        pytest.skip(f"helm not built: {exc}")


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kinds(docs: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def rendered_config(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config"))
    loaded = yaml.safe_load(cm["data"]["config.yaml"])
    assert isinstance(loaded, dict)
    return loaded


# ---------------------------------------------------------------------------------------------
# values.yaml: documented leaves, their comments, and the configuration table of docs/install.md

VALUES = CHART / "values.yaml"
#: Maps whose default content is an example of a free-form object: documented as one value.
FREEFORM = frozenset({
    "resources", "build.resources", "podSecurityContext", "securityContext", "metrics.dashboard.labels",
})
TABLE_START = "<!-- values-table:start (generated from charts/huskies-agent/values.yaml) -->"
TABLE_END = "<!-- values-table:end -->"


def values_defaults() -> dict[str, Any]:
    data = yaml.safe_load(VALUES.read_text())
    assert isinstance(data, dict)
    return data


def value_leaves(data: dict[str, Any] | None = None, prefix: str = "") -> dict[str, Any]:
    """Documented values: dotted path -> default (scalars, lists, empty or free-form maps)."""
    data = values_defaults() if data is None else data
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in FREEFORM:
            out.update(value_leaves(value, path + "."))
        else:
            out[path] = value
    return out


def value_comments() -> dict[str, str]:
    """Dotted path -> the comment block right above its key in values.yaml ("" when none)."""
    leaves = value_leaves()
    stack: list[tuple[int, str]] = []
    comments: dict[str, str] = {}
    block: list[str] = []
    import re

    for line in VALUES.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m or stripped.startswith("-"):
            block = []
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m.group(2)])
        stack.append((indent, m.group(2)))
        inside_leaf = any(path.startswith(leaf + ".") for leaf in leaves)
        if path in leaves and not inside_leaf:
            text = " ".join(block)
            comments[path] = text[3:].strip() if text.startswith("-- ") else text
        block = []
    return comments


def values_table() -> str:
    """The Markdown configuration table: every documented value, its default and setting key."""
    import json
    import re

    leaves = value_leaves()
    comments = value_comments()
    rows = [
        "| Value | Default | Operator setting | Description |",
        "| --- | --- | --- | --- |",
    ]
    for path, default in leaves.items():
        desc = comments.get(path, "")
        setting = ""
        m = re.search(r"\s*\[([a-z_., ]+)\]\s*$", desc)
        if m:
            setting = ", ".join(f"`{s.strip()}`" for s in m.group(1).split(","))
            desc = desc[: m.start()].rstrip()
        shown = json.dumps(default, separators=(", ", ": "))
        rows.append(f"| `{path}` | `{shown}` | {setting} | {desc.replace('|', '&#124;')} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m tests.chart.chartlib > table (pasted into docs/install.md)
    print(values_table())
