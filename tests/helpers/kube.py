"""API calls only tests and benchmarks make, on top of the operator's :class:`Kube` edge.

They used to live in the runtime package although no runtime code calls them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp

from huskies_agent.k8s.api import Kube
from huskies_agent.k8s.errors import error_for


class TestKube(Kube):
    """:class:`Kube` plus reads, evictions and raw watches for assertions."""

    __test__ = False  # not a pytest test class despite the name

    async def get_job(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"{self._jobs}/{name}")
        return result

    async def evict_pod(self, name: str) -> None:
        await self.request("POST", f"{self._pods}/{name}/eviction", {
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": self.namespace}})

    async def watch(self, path: str, params: Mapping[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Stream watch events (``{"type", "object"}``) until the server ends the watch."""
        c = self.connection
        query = {"watch": "true", **(params or {})}
        url = c.server + path + "?" + urlencode(query)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
        async with c.session.get(url, headers=c.headers(), ssl=c.ssl_context, auth=c.basic,
                                 timeout=timeout) as resp:
            if resp.status >= 300:
                raise error_for(resp.status, resp.reason or "", await resp.text(), "WATCH", path)
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
