"""Fixtures of the autoscaling tier (see test_karpenter.py).

The tier runs in `make test` (which builds Karpenter-kwok first, `make karpenter`). Its binaries are
found like the control plane's (tests/conftest.py): outside CI a missing build skips the tests with
the command that builds it; with ``$CI`` set it is built here, and a failed build is an error naming
the step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from tests.autoscale import karpenter
from tests.autoscale.env import AutoscaleConfig, AutoscaleEnv


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def karpenter_bin() -> Path:
    """The directory with karpenter-kwok and its CRDs (tools/karpenter/build.sh)."""
    if os.environ.get("CI"):
        return karpenter.karpenter_dir(build=True)  # raises, naming the failed build step
    try:
        return karpenter.karpenter_dir(build=False)
    except karpenter.KarpenterNotBuilt as exc:
        pytest.skip(str(exc))


MakeEnv = Callable[..., AutoscaleEnv]


@pytest.fixture
def make_env(tmp_path: Path, request: pytest.FixtureRequest, karpenter_bin: Path,
             testbin: Path) -> Iterator[MakeEnv]:
    """Start a setup with the given :class:`AutoscaleConfig` fields; on failure the logs' tails are printed."""
    envs: list[AutoscaleEnv] = []
    with ExitStack() as stack:
        def make(**overrides: object) -> AutoscaleEnv:
            cfg = AutoscaleConfig(**overrides)  # type: ignore[arg-type]
            run_dir = tmp_path / f"env{len(envs)}"
            e = stack.enter_context(AutoscaleEnv(run_dir, cfg, testbin=testbin, karpenter_dir=karpenter_bin))
            envs.append(e)
            return e

        yield make
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            for e in envs:
                print(e.logs())
                print(f"(all logs under {e.run_dir})")


@pytest.fixture
def env(make_env: MakeEnv) -> AutoscaleEnv:
    """The whole setup with the test defaults."""
    return make_env()
