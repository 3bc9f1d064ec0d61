"""The runner's git steps, each one ``git`` child process with an argument list.

Network steps talk to the repo URL itself rather than to ``origin``, so nothing the
agent writes into ``.git/config`` can redirect a push. Every failure becomes a
:class:`RunnerError` whose message carries the (redacted) tail of git's stderr.
"""

from __future__ import annotations

import enum
import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from huskies_agent.runner.proc import Completed, run_bounded
from huskies_agent.runner.redact import Redactor
from huskies_agent.runner.result import ExitCode, RunnerError

log = logging.getLogger(__name__)

EPOCH_TRAILER = "Huskies-Claim-Epoch"
#: Local ref that holds a fetched remote tip while the runner inspects it.
INSPECT_REF = "refs/huskies/remote-tip"
_STDERR_TAIL_CHARS = 800


def _upload_pack(source: Path) -> str:
    """The serving side of a local fetch, allowed to read ``source`` although another uid owns it.

    (A local transport clears ``-c`` settings for the serving process, so they go on its command.)
    """
    return shlex.join(["git", "-c", f"safe.directory={source}", "upload-pack"])


class PushStatus(enum.Enum):
    OK = "ok"
    #: The remote answered but refused the update (lease, hook, protected branch...).
    REJECTED = "rejected"
    #: No answer from the remote (unreachable, auth failure, timeout).
    FAILED = "failed"


@dataclass(frozen=True)
class PushOutcome:
    status: PushStatus
    reason: str


class Git:
    def __init__(self, *, url: str, env: Mapping[str, str], redactor: Redactor, timeout: float) -> None:
        self.url = url
        self.env = dict(env)
        self.redactor = redactor
        self.timeout = timeout

    # ------------------------------------------------------------------ plumbing
    def run(
        self, args: Sequence[str], *, cwd: Path | None = None, input_text: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        argv = ["git", *args]
        log.debug("git %s", " ".join(a if a != self.url else "<repo-url>" for a in args))
        try:
            return run_bounded(argv, cwd=cwd, env=env or self.env, timeout=self.timeout, input_text=input_text)
        except OSError as exc:
            raise RunnerError(ExitCode.GIT_FAILED, f"git could not be started: {exc}") from exc

    def describe(self, done: Completed) -> str:
        if done.timed_out:
            return f"timed out after {self.timeout:g}s"
        text = (done.stderr or done.stdout).strip()
        if len(text) > _STDERR_TAIL_CHARS:
            text = "..." + text[-_STDERR_TAIL_CHARS:]
        return self.redactor.redact(text) or f"exit status {done.returncode}"

    def checked(
        self, args: Sequence[str], *, code: ExitCode, what: str, cwd: Path | None = None,
        input_text: str | None = None, env: Mapping[str, str] | None = None,
    ) -> Completed:
        done = self.run(args, cwd=cwd, input_text=input_text, env=env)
        if done.returncode != 0:
            raise RunnerError(code, f"{what} failed: {self.describe(done)}")
        return done

    # ------------------------------------------------------------------ remote
    def ls_remote(self, branches: Sequence[str]) -> dict[str, str]:
        """``{branch: sha}`` for those of ``branches`` that exist on the remote."""
        refs = [f"refs/heads/{b}" for b in branches]
        done = self.checked(
            ["ls-remote", "--heads", "--", self.url, *refs],
            code=ExitCode.REMOTE_FAILED, what="reaching the remote (git ls-remote)",
        )
        found: dict[str, str] = {}
        for line in done.stdout.splitlines():
            sha, _, ref = line.partition("\t")
            if ref.startswith("refs/heads/") and ref in refs:
                found[ref[len("refs/heads/"):]] = sha.strip()
        return found

    def remote_tip(self, branch: str) -> str:
        """The remote sha of ``branch``, ``""`` when it does not exist."""
        return self.ls_remote([branch]).get(branch, "")

    def clone(self, dest: Path, *, branch: str, depth: int) -> None:
        args = ["clone", "--no-tags", "--single-branch", "--branch", branch]
        if depth > 0:
            args += ["--depth", str(depth)]
        args += ["--", self.url, str(dest)]
        self.checked(args, code=ExitCode.REMOTE_FAILED, what=f"cloning branch {branch}")

    def fetch_branch(self, repo: Path, branch: str, into: str, *, depth: int) -> str:
        """Fetch remote ``branch`` into local ref ``into``; returns its sha."""
        args = ["fetch", "--no-tags", "--no-write-fetch-head"]
        if depth > 0:
            args += ["--depth", str(depth)]
        args += ["--", self.url, f"+refs/heads/{branch}:{into}"]
        self.checked(args, cwd=repo, code=ExitCode.REMOTE_FAILED, what=f"fetching branch {branch}")
        return self.rev_parse(repo, into)

    def push_with_lease(self, repo: Path, branch: str, expected: str, source: str = "HEAD") -> PushOutcome:
        """Push ``source`` to ``branch`` only if the remote branch is at ``expected`` ("" = absent)."""
        ref = f"refs/heads/{branch}"
        done = self.run(
            ["push", "--porcelain", "--no-verify", f"--force-with-lease={ref}:{expected}",
             "--", self.url, f"{source}:{ref}"],
            cwd=repo,
        )
        if done.returncode == 0 and not done.timed_out:
            return PushOutcome(PushStatus.OK, "")
        for line in done.stdout.splitlines():
            flag, _, rest = line.partition("\t")
            if flag == "!":
                # "<from>:<to>\t[rejected] (stale info)" or "[remote rejected] (hook declined)"
                reason = rest.partition("\t")[2].strip() or rest.strip()
                return PushOutcome(PushStatus.REJECTED, self.redactor.redact(reason))
        return PushOutcome(PushStatus.FAILED, self.describe(done))

    # ------------------------------------------------------------------ local repositories
    def init_bare(self, path: Path) -> None:
        self.checked(["init", "-q", "--bare", str(path)], code=ExitCode.GIT_FAILED, what="creating a repository")

    def fetch_local(self, repo: Path, source: Path, refspecs: Sequence[str]) -> None:
        """Fetch ``refspecs`` from the local repository ``source`` (owned by another uid)."""
        self.checked(
            ["-c", "protocol.file.allow=always", "fetch", "-q", f"--upload-pack={_upload_pack(source)}",
             "--no-tags", "--no-write-fetch-head", "--update-shallow", "--", f"file://{source}", *refspecs],
            cwd=repo, code=ExitCode.GIT_FAILED, what="copying the checkout's history",
        )

    def clone_local(self, source: Path, dest: Path, *, branch: str) -> None:
        """Clone ``branch`` of the local repository ``source`` (owned by another uid) into ``dest``."""
        self.checked(
            ["-c", "protocol.file.allow=always", "clone", "-q", f"--upload-pack={_upload_pack(source)}",
             "--no-tags", "--no-local", "--branch", branch, "--", f"file://{source}", str(dest)],
            code=ExitCode.GIT_FAILED, what=f"checking out {branch}",
        )

    def import_objects(self, repo: Path, objects: Path, tip: str, exclude: str) -> None:
        """Copy the objects of ``tip`` (minus those of ``exclude``) from another repository's object store.

        Only object files are read, by hash, through ``GIT_ALTERNATE_OBJECT_DIRECTORIES``:
        no configuration, hook, attribute or filter of that repository is used.
        """
        env = {**self.env, "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects)}
        done = self.checked(["cat-file", "-t", tip], cwd=repo, env=env, code=ExitCode.GIT_FAILED,
                            what="reading the agent's snapshot")
        if done.stdout.strip() != "commit":
            raise RunnerError(ExitCode.GIT_FAILED, f"the agent's snapshot {tip[:12]} is not a commit")
        self.checked(
            ["pack-objects", "--revs", "-q", str(repo / "objects" / "pack" / "pack")],
            cwd=repo, env=env, input_text=f"{tip}\n^{exclude}\n", code=ExitCode.GIT_FAILED,
            what="copying the agent's work",
        )
        self.checked(["cat-file", "-e", f"{tip}^{{tree}}"], cwd=repo, code=ExitCode.GIT_FAILED,
                     what="checking the copied work")

    def commit_tree(self, repo: Path, tree: str, parents: Sequence[str], message: str,
                    identity: Mapping[str, str]) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        done = self.checked(args, cwd=repo, input_text=message, env={**self.env, **identity},
                            code=ExitCode.GIT_FAILED, what="committing")
        return done.stdout.strip()

    def is_ancestor(self, repo: Path, ancestor: str, rev: str) -> bool:
        done = self.run(["merge-base", "--is-ancestor", ancestor, rev], cwd=repo)
        return done.returncode == 0

    def try_rev_parse(self, repo: Path, rev: str) -> str:
        """``rev`` as a commit sha, ``""`` when it does not resolve."""
        done = self.run(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=repo)
        return done.stdout.strip() if done.returncode == 0 else ""

    def update_ref(self, repo: Path, ref: str, sha: str) -> None:
        self.local(repo, ["update-ref", ref, sha], f"setting {ref}")

    # ------------------------------------------------------------------ local
    def rev_parse(self, repo: Path, rev: str) -> str:
        done = self.checked(
            ["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            cwd=repo, code=ExitCode.GIT_FAILED, what=f"resolving {rev}",
        )
        return done.stdout.strip()

    def local(self, repo: Path, args: Sequence[str], what: str) -> Completed:
        return self.checked(args, cwd=repo, code=ExitCode.GIT_FAILED, what=what)

    def worktree_dirty(self, repo: Path) -> bool:
        done = self.local(repo, ["status", "--porcelain=v1", "-z", "--untracked-files=all"], "git status")
        return bool(done.stdout.strip("\0").strip())

    def commit_all(self, repo: Path, message: str, identity: Mapping[str, str]) -> str:
        """Stage everything and commit (empty commits allowed); returns the new HEAD."""
        self.local(repo, ["add", "-A"], "staging changes (git add -A)")
        env = {**self.env, **identity}
        self.checked(
            ["commit", "--no-verify", "--allow-empty", "--no-edit", "-F", "-"],
            cwd=repo, code=ExitCode.GIT_FAILED, what="committing", input_text=message, env=env,
        )
        return self.rev_parse(repo, "HEAD")

    def trailer_values(self, repo: Path, rev: str, key: str) -> list[str]:
        done = self.local(
            repo, ["show", "-s", f"--format=%(trailers:key={key},valueonly)", rev, "--"],
            f"reading the {key} trailer",
        )
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]

    def claim_epoch_of(self, repo: Path, rev: str) -> int | None:
        """The highest ``Huskies-Claim-Epoch`` trailer of ``rev``; ``None`` when it has none."""
        epochs: list[int] = []
        for value in self.trailer_values(repo, rev, EPOCH_TRAILER):
            try:
                epochs.append(int(value.split()[0]))
            except (ValueError, IndexError):
                continue
        return max(epochs) if epochs else None
