"""Operator test helpers: a pipeline peer, API access, polling (processes: huskies_agent_dev.localrun)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from tests.helpers.kube import TestKube

from huskies_agent.k8s.api import Kube, connect
from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.pipeline.model import NodePresence
from huskies_agent.sync.client import RendezvousClient
from huskies_agent_dev.localrun import FAST, Proc, free_port, metrics_text, start_operator, start_rendezvous, wait_http


async def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
                     what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def pipeline(url: str) -> AsyncIterator[PipelineDoc]:
    """A test peer on the rendezvous: edits go through the real sync protocol."""
    doc = PipelineDoc()
    async with RendezvousClient(doc, url, reconnect_min=0.1, reconnect_max=0.5) as client:
        await client.wait_synced(timeout=10)
        doc.client = client  # type: ignore[attr-defined]
        yield doc


async def flush(doc: PipelineDoc) -> None:
    ok = await doc.client.confirm(5)  # type: ignore[attr-defined]
    assert ok, "rendezvous did not confirm the test's edit"


def pretend_node(doc: PipelineDoc, node_id: str, *, alive_for: float = 3600) -> None:
    """Make another (fake) node look alive in the document."""
    doc.put_presence(NodePresence(node_id=node_id, last_seen=time.time() + alive_for, alive=True))


@contextlib.asynccontextmanager
async def kube(kubeconfig: str, namespace: str) -> AsyncIterator[TestKube]:
    api = await connect(kubeconfig)
    k = TestKube(api, namespace)
    try:
        yield k
    finally:
        await k.close()


async def first_storyjob(k: Kube, phase: str) -> dict[str, Any] | None:
    """The first StoryJob in ``phase``, or None."""
    for sj in await k.list_storyjobs(""):
        if (sj.get("status") or {}).get("phase") == phase:
            return sj
    return None


def dump(*procs: Proc) -> str:
    return "\n".join(f"===== {p.name} =====\n{p.log()[-20000:]}" for p in procs)



__all__ = ["FAST", "Proc", "dump", "eventually", "first_storyjob", "flush", "free_port", "kube", "metrics_text",
           "pipeline", "pretend_node", "start_operator", "start_rendezvous", "wait_http"]
