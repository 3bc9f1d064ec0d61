"""What the engine needs from the world, as protocols: the Kubernetes API, the
rendezvous replication and the clocks.

``k8s.api.Kube`` and ``sync.client.RendezvousClient`` satisfy these; unit tests pass
an in-memory API, a scripted replicator and a hand-driven monotonic clock instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

#: Seconds from a monotonic source; every timeout of the engine is measured with it.
Monotonic = Callable[[], float]
#: Seconds since the epoch; only written into the document and StoryJob timestamps.
WallClock = Callable[[], float]


class KubeApi(Protocol):
    """Every Kubernetes call the engine makes (one namespace).

    Errors are ``k8s.api.ApiException`` with the HTTP status (404 when missing, 409
    when the name exists); :meth:`delete_job` returns False when the Job was gone and
    :meth:`post_event` never raises.
    """

    async def create_storyjob(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def get_storyjob(self, name: str) -> dict[str, Any]: ...

    async def list_storyjobs(self, selector: str) -> list[dict[str, Any]]: ...

    async def patch_storyjob_status(self, name: str, status: Mapping[str, Any]) -> None: ...

    async def delete_storyjob(self, name: str) -> None: ...

    async def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def get_job(self, name: str) -> dict[str, Any]: ...

    async def list_jobs(self, selector: str) -> list[dict[str, Any]]: ...

    async def delete_job(self, name: str, *, pod_grace_seconds: int | None = None) -> bool: ...

    async def list_pods(self, selector: str) -> list[dict[str, Any]]: ...

    async def list_events(self, field_selector: str) -> list[dict[str, Any]]:
        """core/v1 Events of the namespace matching a field selector (``involvedObject.name=...``)."""
        ...

    async def post_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False,
        component: str = ...,
    ) -> None: ...


class PodApi(Protocol):
    """The pod calls of the warm-slot pool (``engine/warmpool.py``); ``k8s.api.Kube`` has them."""

    async def list_pods(self, selector: str) -> list[dict[str, Any]]: ...

    async def create_pod(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def delete_pod(self, name: str) -> bool: ...


class Replicator(Protocol):
    """What the engine needs of the rendezvous sync (``sync.client.RendezvousClient``)."""

    @property
    def connected(self) -> bool: ...

    @property
    def synced(self) -> bool:
        """The current connection finished its initial sync."""
        ...

    async def wait_synced(self, timeout: float | None = None) -> None: ...

    async def confirm(self, timeout: float) -> bool:
        """True once the rendezvous holds every local update made before the call."""
        ...

    def on_state(self, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``callback(connected)`` when a connection opens or ends; returns a remover."""
        ...
