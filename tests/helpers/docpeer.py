"""Another node of the pipeline, in-process: a second real PipelineDoc whose updates
reach a harness's document as remote updates (as the sync client applies them)."""

from __future__ import annotations

from typing import Any

from huskies_agent.pipeline.document import PipelineDoc
from huskies_agent.pipeline.model import NodePresence


class Peer:
    def __init__(self, h: Any, node: str) -> None:
        self.h, self.node, self.doc = h, node, PipelineDoc()
        self.pull()

    def pull(self) -> None:
        self.doc.apply_remote(self.h.doc.encode_update(self.doc.state_vector()))

    def push(self) -> None:
        self.h.doc.apply_remote(self.doc.encode_update(self.h.doc.state_vector()))

    def beat(self, capacity: int = 0) -> None:
        self.doc.put_presence(NodePresence(node_id=self.node, last_seen=0.0, capacity=capacity))
        self.push()

    def claim(self, sid: str) -> None:
        self.pull()
        self.doc.claim(sid, self.node, 0.0)
        self.push()
