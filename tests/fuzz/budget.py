"""Hypothesis settings of the fuzz tier: bounded by default, longer with HUSKIES_HYPOTHESIS_PROFILE=long.

Settings are applied per test (not as a global profile) so this tier does not change
the settings of other Hypothesis tests in the same run. The default profile keeps the
whole tier to about a minute on a small machine; ``long`` runs 25 times the examples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HUSKIES_HYPOTHESIS_PROFILE", "default")
_SCALE = 25 if PROFILE == "long" else 1


def fuzz(examples: int) -> settings:
    """Settings for a fuzz test running ``examples`` examples in the default profile."""
    return settings(
        max_examples=examples * _SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )
