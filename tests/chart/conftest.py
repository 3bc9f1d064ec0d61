"""Fixtures of the Helm chart tests (helpers live in tests/chart/chartlib.py)."""

from __future__ import annotations

import pytest
from tests.chart.chartlib import Helm, find_helm_binary


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm from $HELM or tools/testbin/build.sh, with its own HELM_*_HOME under tmp."""
    return Helm(find_helm_binary(), tmp_path_factory.mktemp("helm-home"))
