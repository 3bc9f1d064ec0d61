"""Fixtures of the opt-in autoscaling tier (see test_karpenter.py)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from tests.autoscale.env import AutoscaleConfig, AutoscaleEnv


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AutoscaleEnv]:
    """The whole setup with the test defaults; on failure the logs' tails are printed."""
    with AutoscaleEnv(tmp_path, AutoscaleConfig()) as e:
        yield e
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            print(e.logs())
            print(f"(all logs under {tmp_path})")
