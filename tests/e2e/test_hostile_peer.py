"""Issue 12 end to end: a hostile peer's writes stop neither the rendezvous nor a running operator.

A peer writes a story whose name is a list nested 1,200 deep (refused by the rendezvous) and one
nested 40 deep (accepted by the rendezvous, whose bound is 256, but deeper than the operator's
``document_max_depth``). The rendezvous restarts on its database, the operator is killed and started
again; it sees every other story, quarantines the hostile one with a reason, adopts its running Jobs,
deletes none and finishes every story once.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from tests.e2e.harness import eventually, flush, kube, metrics_text, pipeline
from tests.sync.hostile import nested_list, nested_update, refused_close

from huskies_agent.sync import protocol
from huskies_agent_dev.localrun import Proc, start_operator, start_rendezvous

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


async def test_hostile_values_stop_neither_the_rendezvous_nor_a_restarted_operator(
        storyjob_crd, namespace_factory, log_dir: Path, procs: list[Proc]) -> None:
    db = log_dir / "hostile.sqlite"
    server, url = start_rendezvous(log_dir, db=db)
    procs.append(server)
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    ns = namespace_factory()
    env = {"HUSKIES_BUILD_POD_ANNOTATIONS": json.dumps({"test.huskies/run-for": "12s"})}
    op, metrics_port = start_operator("target", kubeconfig=str(storyjob_crd.kubeconfig_path), namespace=ns,
                                      rendezvous=url, log_dir=log_dir, env=env)
    procs.append(op)
    ids = [f"{700 + i}_honest" for i in range(4)]
    async with pipeline(url) as doc, kube(str(storyjob_crd.kubeconfig_path), ns) as k:
        doc.add_stories([{"story_id": sid, "stage": "4_merge"} for sid in ids])
        await flush(doc)
        await eventually(lambda: _jobs(k, 4), 60, what="four running jobs")
        jobs_before = {j["metadata"]["uid"] for j in await k.list_jobs("")}

        # 1. Deeper than the rendezvous takes: refused with a reason, the writer's connection closed.
        code, reason = await refused_close(url, protocol.encode_update(nested_update(1200)))
        assert code == 1008 and "nested deeper than 256" in reason
        # 2. Within the rendezvous' bound but deeper than the operator's document_max_depth (16).
        async with pipeline(url) as evil:
            evil.add_story("799_evil", stage="4_merge")
            evil.put_raw("799_evil", name=nested_list(40))
            await flush(evil)

        # The rendezvous restarts on its database; the operator is killed hard and started again.
        server.signal(signal.SIGTERM)
        server.wait(15)
        restarted, _ = start_rendezvous(log_dir, port=port, db=db)
        procs.append(restarted)
        op.signal(signal.SIGKILL)
        op.wait(5)
        await asyncio.sleep(1)
        op.start()

        await eventually(lambda: all(doc.story(s) is not None and doc.story(s).stage == "5_done"  # type: ignore
                                     for s in ids), 120, what="every honest story done after the restarts")
        log = op.log()
        assert "adoption: 4 runs adopted" in log, log[-3000:]
        assert "799_evil" in log and "quarantin" in log, "the hostile story was not reported"
        metrics = metrics_text(metrics_port)
        malformed = [line for line in metrics.splitlines() if line.startswith("huskies_document_malformed ")]
        assert malformed and float(malformed[0].split()[1]) >= 1, malformed
        sjs = await k.list_storyjobs("")
        assert sorted(sj["spec"]["storyId"] for sj in sjs) == sorted(ids), "a story ran twice or the evil one ran"
        assert all((sj.get("status") or {}).get("phase") == "Succeeded" for sj in sjs), sjs
        jobs_after = {j["metadata"]["uid"] for j in await k.list_jobs("")}
        assert jobs_after == jobs_before, "a running Job was deleted or recreated across the restarts"


async def _jobs(k, count: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await k.list_jobs("")) >= count
