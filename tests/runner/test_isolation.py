"""A hostile agent in the story pod gets no git credential and pushes nothing but through the fence.

The pod is the operator's own Job spec, run by ``pod_sim`` with each container's uid;
the remote is ``git http-backend`` behind HTTP Basic auth, so a push without the token
fails. The scripted hostile agent (``hostile_agent.py``) runs as the agent's uid in place
of claude. Needs root (to start processes as other uids); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pod_sim import IS_ROOT, PodSim
from runner_helpers import (
    FAKE_CLAUDE,
    HERE,
    STORY_ID,
    STORY_TEXT,
    GitHttpServer,
    clone_branch,
    git,
    make_story_repo,
    remote_branches,
    trailers,
)

from huskies_agent import contract
from huskies_agent.k8s import objects
from huskies_agent.settings import BuildPodSettings, Settings

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="starting the containers under their own uids needs root")

TOKEN = "ghp_ISOLATIONsecretTOKEN0123456789abcdef"
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nISOLATIONsecretKEYmaterial0123456789\n"
ANTHROPIC = "sk-ant-ISOLATION-anthropic-key-0123456789"
BRANCH = f"feature/story-{STORY_ID}"
HOSTILE = HERE / "hostile_agent.py"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[GitHttpServer, Path, str]]:
    root = tmp_path / "http-root"
    root.mkdir()
    bare = root / "project.git"
    main_sha = make_story_repo(bare, {"README.md": "a project\n", f".huskies/work/2_current/{STORY_ID}.md": STORY_TEXT})
    git("config", "http.receivepack", "true", cwd=bare)
    with GitHttpServer(root, GitHttpServer.basic("x-access-token", TOKEN)) as srv:
        yield srv, bare, main_sha


#: The same pod changed as issue 16's users change it: other uids (OpenShift-like), renamed Secret keys,
#: env from a ConfigMap and a sidecar (under a third uid) beside the hostile agent.
PATCHED: dict[str, Any] = {
    "agent_uid": 1000650001, "git_uid": 1000650002, "git_token_key": "github-token",
    "git_ssh_private_key_key": "id_ed25519", "anthropic_secret_key": "claude",
    "pod_patch": {
        "initContainers": [{"name": "sidecar", "image": "registry.invalid/sidecar:1", "restartPolicy": "Always",
                            "command": ["python3", "-c", "import time; time.sleep(3600)"],
                            "securityContext": {"runAsUser": 20003, "allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}}}],
        "containers": [{"name": "agent", "envFrom": [{"configMapRef": {"name": "toolchain"}}]}],
    },
}


def make_pod(url: str, epoch: int, agent: dict[str, str], *, stage: str = "2_current",
             checkpoint: float | None = None, build: dict[str, Any] | None = None) -> PodSim:
    settings = Settings(namespace="ns", build=BuildPodSettings(
        repo_url=url, base_branch="main", git_secret="git-creds", anthropic_secret="anthropic", **(build or {})))
    assert objects.build_pod_problems(settings) == []
    job = objects.build_job(settings, objects.RunSpec(STORY_ID, stage, "node-a", epoch), owner_uid="uid")
    extra: dict[str, dict[str, str]] = {contract.AGENT_CONTAINER: {"HUSKIES_AGENT_TIMEOUT_SECONDS": "120", **agent}}
    if checkpoint is not None:
        for name in (contract.AGENT_CONTAINER, contract.PUBLISH_CONTAINER):
            extra.setdefault(name, {})[contract.ENV_CHECKPOINT_INTERVAL] = str(checkpoint)
    b = settings.build
    secrets = {("git-creds", b.git_token_key): TOKEN, ("git-creds", b.git_ssh_private_key_key): SSH_KEY,
               ("anthropic", b.anthropic_secret_key): ANTHROPIC}
    return PodSim(job, secrets, extra, configmaps={"toolchain": {"TOOLCHAIN": "go1.23"}})


def read_tree(root: Path, *, skip_git: bool = False) -> str:
    out = []
    for path in root.rglob("*"):
        if skip_git and ".git" in path.relative_to(root).parts:
            continue
        if path.is_file() and not path.is_symlink():
            out.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


def remote_history_text(url: str, dest: Path) -> str:
    checkout = clone_branch(url_with_token(url), BRANCH, dest)
    log = git("log", "--format=%B%n%an%n%ae", "--all", cwd=checkout)
    blobs = git("log", "-p", "--all", "--no-textconv", "--no-ext-diff", cwd=checkout)
    return log + blobs + read_tree(checkout, skip_git=True)  # (its .git/config has the test's own URL)


def url_with_token(url: str) -> str:
    return url.replace("http://", f"http://x-access-token:{TOKEN}@")


def stop_lurker(loot: Path) -> None:
    pidfile = loot / "lurker.pid"
    deadline = time.monotonic() + 40
    while pidfile.exists() and time.monotonic() < deadline:
        pid = int(pidfile.read_text() or 0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    if pidfile.exists():
        with_pid = int(pidfile.read_text() or 0)
        if with_pid:
            try:
                os.kill(with_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize(("swap", "build"), [(False, None), (True, None), (False, PATCHED)],
                         ids=["traps", "traps-and-symlinked-records", "traps-in-a-patched-pod-with-other-uids"])
def test_hostile_agent_gets_no_credentials_and_only_the_fenced_push_lands(
    server: tuple[GitHttpServer, Path, str], tmp_path: Path, swap: bool, build: dict[str, Any] | None,
) -> None:
    srv, bare, main_sha = server
    url = srv.url("project.git")
    pod = make_pod(url, 7, {"HUSKIES_CLAUDE_BIN": str(HOSTILE)}, build=build)
    agent_uid = (build or {}).get("agent_uid", contract.AGENT_UID)
    keys = (build or {}).get("git_token_key", "token"), (build or {}).get("git_ssh_private_key_key", "ssh-privatekey")
    loot = pod.root / "loot"
    loot.mkdir(mode=0o777)
    loot.chmod(0o777)
    secret_dir = pod.volume_dirs["git-credentials"]
    probe = [str(pod.root), *(str(d) for d in pod.volume_dirs.values())]
    pod.extra_env[contract.AGENT_CONTAINER].update({  # type: ignore[index]
        "HOSTILE_LOOT": str(loot), "HOSTILE_PROBE": os.pathsep.join(probe),
        "HOSTILE_SECRET_PATHS": os.pathsep.join([str(secret_dir / key) for key in keys]),
        "HOSTILE_LURK_SECONDS": "15", "HOSTILE_SWAP": "1" if swap else "0",
    })
    try:
        runs = pod.run()
        stop_lurker(loot)
        workspace = read_tree(pod.volume_dirs["work"])
        stolen = read_tree(loot)
        outputs = "".join(r.stdout + r.stderr + r.termination for r in runs.values())
        trap_uids = {p.name.split("-")[1] for p in loot.glob("trap-*") if p.name != "trap.sh"}
        pushes = json.loads(next(loot.glob("pushes-*.json")).read_text())
        looked_at = {p.name.split("-")[0] for p in loot.glob("*.json")}
        lurked = "".join(p.read_text() for p in loot.glob("lurker-*.json"))
        result = pod.result()
    finally:
        pod.close()

    # It looked everywhere: every process, the volumes, its own environment ...
    assert looked_at == {"env", "procs", "files", "pushes", "lurker"}, looked_at
    assert ANTHROPIC in stolen  # (sanity: it did see what the agent is meant to see)
    assert "run-story\\u0000publish" in lurked  # the lurker watched the publisher's processes at work
    for secret in (TOKEN, SSH_KEY.splitlines()[1]):
        assert secret not in stolen, "the agent read a git credential"
        assert secret not in workspace, "a git credential was left in the workspace"
        assert secret not in outputs
    assert ANTHROPIC not in outputs  # redacted in the agent's log
    # ... and its traps never ran as anything but itself.
    # (they are live: the agent phase's own git, in the agent's uid, set them off)
    assert trap_uids == {str(agent_uid)}, trap_uids
    if build is not None:
        assert {r.name: r.uid for r in runs.values()} == {
            "clone": 1000650002, "sidecar": 20003, "agent": 1000650001, "publish": 1000650002}
        assert "TOOLCHAIN" in stolen and "go1.23" in stolen  # the ConfigMap's env did reach the agent
    assert all(p["rc"] != 0 for p in pushes.values()), pushes

    branches = remote_branches(url_with_token(url))
    if swap and result["exit_code"] != 0:
        # The publisher refused the symlinked report (it never follows one): nothing was pushed.
        assert result["exit_code"] == contract.ExitCode.AGENT_FAILED, result["error"]
        assert "unusable agent report" in result["error"] and branches == {"main": main_sha}
        return
    # The only push that landed is the publisher's, fenced at epoch 7, on the story branch.
    assert result["exit_code"] == 0 and result["pushed"] is True, result["error"]
    assert branches == {"main": main_sha, BRANCH: result["commit"]}
    checkout = clone_branch(url_with_token(url), BRANCH, tmp_path / "check")
    assert trailers(checkout)["Huskies-Claim-Epoch"] == "7"
    assert trailers(checkout)["Huskies-Outcome"] == "completed"
    assert (checkout / "hostile.txt").exists()
    # The agent's own commit (with its forged trailer) is kept below the publisher's.
    assert "999999" in git("log", "-1", "--format=%B", "HEAD^", cwd=checkout)
    history = remote_history_text(url, tmp_path / "history")
    assert TOKEN not in history and SSH_KEY.splitlines()[1] not in history

    # The forged epoch does not fence the next claim: epoch 8 resumes and pushes over it.
    second = make_pod(url, 8, {"HUSKIES_CLAUDE_BIN": str(FAKE_CLAUDE)}, stage="3_qa", build=build)
    try:
        runs2 = second.run()
    finally:
        second.close()
    result2 = objects.parse_result(runs2[contract.RESULT_CONTAINER].termination)
    assert result2["exit_code"] == 0 and result2["base_commit"] == result["commit"], result2
    check2 = clone_branch(url_with_token(url), BRANCH, tmp_path / "check2")
    assert trailers(check2)["Huskies-Claim-Epoch"] == "8"
    assert (check2 / "hostile.txt").exists()


def wait_for_checkpoint(url: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tip = remote_branches(url_with_token(url)).get(BRANCH)
        if tip:
            return tip
        time.sleep(0.2)
    raise AssertionError("no checkpoint was pushed")


def test_checkpoints_while_working_and_on_sigterm_then_a_higher_epoch_resumes(
    server: tuple[GitHttpServer, Path, str], tmp_path: Path,
) -> None:
    srv, bare, _main = server
    url = srv.url("project.git")
    slow = {"HUSKIES_CLAUDE_BIN": str(FAKE_CLAUDE), "FAKE_CLAUDE_MODE": "slow", "FAKE_CLAUDE_SLEEP": "600",
            "FAKE_CLAUDE_CONTENT": "half a widget"}
    pod = make_pod(url, 3, slow, checkpoint=1)
    try:
        pod.run_init()
        pod.start_main()
        # A periodic checkpoint lands while the agent still works.
        first_tip = wait_for_checkpoint(url)
        periodic = clone_branch(url_with_token(url), BRANCH, tmp_path / "periodic")
        assert trailers(periodic)["Huskies-Outcome"] == "checkpoint"
        assert trailers(periodic)["Huskies-Claim-Epoch"] == "3"
        assert (periodic / "fake_claude_output.txt").read_text() == "half a widget\n"
        # The pod is deleted (claim lost or node drained): SIGTERM to every container.
        pod.terminate()
        runs = pod.wait_main(timeout=120)
    finally:
        pod.close()
    result = objects.parse_result(runs[contract.RESULT_CONTAINER].termination)
    assert result["exit_code"] == contract.ExitCode.TERMINATED, result
    tip = remote_branches(url_with_token(url))[BRANCH]
    assert tip in (first_tip, result["commit"])
    final = clone_branch(url_with_token(url), BRANCH, tmp_path / "final")
    assert trailers(final)["Huskies-Claim-Epoch"] == "3"
    assert trailers(final)["Huskies-Outcome"] == "checkpoint"

    # The taker (higher epoch) resumes from the checkpoint ...
    taker = make_pod(url, 4, {"HUSKIES_CLAUDE_BIN": str(FAKE_CLAUDE), "FAKE_CLAUDE_CONTENT": "the rest"})
    try:
        runs = taker.run()
    finally:
        taker.close()
    result = objects.parse_result(runs[contract.RESULT_CONTAINER].termination)
    assert result["exit_code"] == 0 and result["base_commit"] == tip, result
    done = clone_branch(url_with_token(url), BRANCH, tmp_path / "done")
    assert (done / "fake_claude_output.txt").read_text() == "half a widget\nthe rest\n"
    assert trailers(done)["Huskies-Claim-Epoch"] == "4"

    # ... and a stale run of a lower epoch never overwrites it.
    done_tip = remote_branches(url_with_token(url))[BRANCH]
    stale = make_pod(url, 2, {"HUSKIES_CLAUDE_BIN": str(FAKE_CLAUDE)})
    try:
        stale.run()
        result = stale.result()
    finally:
        stale.close()
    assert result["exit_code"] == contract.ExitCode.FENCED and result["pushed"] is False, result
    assert "newer than this run's epoch 2" in result["error"]
    assert remote_branches(url_with_token(url))[BRANCH] == done_tip
