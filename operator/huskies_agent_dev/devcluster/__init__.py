"""A real Kubernetes control plane on loopback for tests and the local demo (no Docker).

See :class:`ControlPlane`; binaries come from ``tools/testbin/build.sh`` via :func:`find_testbin`.
"""

from huskies_agent_dev.devcluster._http import ApiError
from huskies_agent_dev.devcluster.controlplane import ControlPlane, ControlPlaneError, NodeSpec, Tier
from huskies_agent_dev.devcluster.testbin import TestbinNotFound, find_testbin

__all__ = [
    "ApiError",
    "ControlPlane",
    "ControlPlaneError",
    "NodeSpec",
    "TestbinNotFound",
    "Tier",
    "find_testbin",
]
