"""The import-linter contracts in pyproject.toml hold, and they would catch a violation.

Each case copies the source tree, changes it, and runs ``lint-imports`` on the copy (the copy comes
first on PYTHONPATH, ahead of the editable install).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "operator")}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, check=False, timeout=240)


def copy_tree(dest: Path) -> Path:
    shutil.copytree(ROOT / "operator", dest / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def append(tree: Path, module: str, line: str) -> None:
    path = tree / "operator" / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}\n")


def engine_as_package(tree: Path) -> None:
    """What the engine split does: engine.py becomes engine/ with submodules."""
    pkg = tree / "operator" / "huskies_agent"
    if (pkg / "engine").is_dir():
        return
    (pkg / "engine").mkdir()
    (pkg / "engine.py").rename(pkg / "engine" / "core.py")
    (pkg / "engine" / "__init__.py").write_text("from huskies_agent.engine.core import *  # noqa: F403\n")


@pytest.fixture(scope="module")
def lint_available() -> None:
    if not LINT_IMPORTS.exists():
        pytest.skip("lint-imports is not installed in this environment")


def test_the_tree_keeps_every_contract(lint_available: None) -> None:
    result = subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                            cwd=ROOT, capture_output=True, text=True, check=False, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_engine_as_a_package_keeps_the_contracts(lint_available: None, tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    engine_as_package(tree)
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "contract"),
    [
        (lambda t: append(t, "huskies_agent.runner.result", "import huskies_agent.k8s.api"),
         "The runner (the build Job's process) depends on no operator part"),
        (lambda t: append(t, "huskies_agent.pipeline.model", "import huskies_agent.claims"), "Layers"),
        (lambda t: append(t, "huskies_agent.k8s.naming", "import huskies_agent.leadership"), "Layers"),
        (lambda t: append(t, "huskies_agent.k8s.naming", "import huskies_agent.sync.stats"), "Layers"),
        (lambda t: (engine_as_package(t), append(t, "huskies_agent.sync.tasks", "import huskies_agent.engine.core")),
         "Layers"),
        (lambda t: append(t, "huskies_agent.settings", "import huskies_agent.engine"), "Shared leaf modules"),
        (lambda t: append(t, "huskies_agent.commands.operator_cmd", "import huskies_agent_dev.localrun"),
         "never imports the development package"),
        (lambda t: append(t, "huskies_agent.commands.demo_cmd", "import huskies_agent_dev.proc"),
         "never imports the development package"),
    ],
    ids=["runner-imports-k8s", "pipeline-imports-claims", "k8s-imports-leadership", "k8s-imports-sync",
         "sync-imports-engine-package", "settings-imports-engine", "operator-imports-dev", "demo-imports-more-dev"],
)
def test_a_violation_breaks_its_contract(
    lint_available: None, tmp_path: Path, change: Callable[[Path], object], contract: str,
) -> None:
    tree = copy_tree(tmp_path)
    change(tree)
    result = lint_imports(tree)
    assert result.returncode != 0
    assert status_of(result.stdout, contract) == "BROKEN", result.stdout


def status_of(report: str, contract: str) -> str:
    """KEPT or BROKEN, as the summary says for the contract whose name contains ``contract``."""
    summary = " ".join(report.split("Contracts")[1].split("Contracts:")[0].split())
    start = summary.index(contract)
    kept, broken = summary.find(" KEPT", start), summary.find(" BROKEN", start)
    candidates = [i for i in (kept, broken) if i >= 0]
    return "BROKEN" if candidates and min(candidates) == broken else "KEPT"
