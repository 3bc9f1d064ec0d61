"""Git credentials for the runner's own git commands, and the agent's environment.

* HTTPS token (``HUSKIES_GIT_TOKEN_FILE``, the Secret volume's file, or
  ``HUSKIES_GIT_TOKEN``): a small credential helper script is written to the private
  state directory. It holds no secret: git runs it with the runner's git environment,
  and it answers with the token read from the file (or that environment), only for the
  repo URL's protocol and host. The helper is configured through ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n`` env
  vars, so it appears neither in ``.git/config`` nor on any command line.
* SSH key (``HUSKIES_GIT_SSH_KEY_FILE``): copied to the workdir with mode 0600 (ssh
  refuses group-readable keys, which is how a Secret volume with ``fsGroup`` mounts
  it) and used through ``GIT_SSH_COMMAND``.
* ``ANTHROPIC_API_KEY`` goes only to the agent; the git token, ssh command and git
  config overrides never do, and ``CLAUDECODE`` is cleared so Claude Code starts.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from huskies_agent import contract

log = logging.getLogger(__name__)

TOKEN_ENV = contract.ENV_GIT_TOKEN
TOKEN_FILE_ENV = contract.ENV_GIT_TOKEN_FILE
_HELPER_HOST_ENV = "HUSKIES_GIT_CREDENTIAL_HOST"
_HELPER_PROTOCOL_ENV = "HUSKIES_GIT_CREDENTIAL_PROTOCOL"
_HELPER_USER_ENV = "HUSKIES_GIT_USERNAME"

#: Env vars that must never reach git (the agent's key) ...
_GIT_ONLY_DROP = frozenset({"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"})
#: ... or the agent (git credentials and the runner's git plumbing).
_AGENT_DROP = frozenset({
    TOKEN_ENV, TOKEN_FILE_ENV, _HELPER_HOST_ENV, _HELPER_PROTOCOL_ENV, "GIT_ASKPASS", "SSH_ASKPASS", "GIT_SSH_COMMAND",
    "GIT_SSH", "GIT_CONFIG_COUNT", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_GLOBAL", "GIT_DIR",
    "GIT_WORK_TREE", "CLAUDECODE", "HUSKIES_GIT_SSH_KEY_FILE",
})

# The helper speaks git's credential protocol: "get" reads key=value lines up to a blank
# line and answers username/password, or nothing (git then tries other means, which
# GIT_TERMINAL_PROMPT=0 turns into a failure).
HELPER_SOURCE = '''\
import os
import sys


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] != "get":
        return 0
    request = {}
    for line in sys.stdin:
        line = line.rstrip("\\n")
        if not line:
            break
        key, _, value = line.partition("=")
        request[key] = value
    token = os.environ.get("HUSKIES_GIT_TOKEN", "")
    path = os.environ.get("HUSKIES_GIT_TOKEN_FILE", "")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError:
            return 0
    if not token:
        return 0
    if request.get("protocol") != os.environ.get("HUSKIES_GIT_CREDENTIAL_PROTOCOL"):
        return 0
    if request.get("host") != os.environ.get("HUSKIES_GIT_CREDENTIAL_HOST"):
        return 0
    user = os.environ.get("HUSKIES_GIT_USERNAME") or "x-access-token"
    sys.stdout.write("username=" + user + "\\npassword=" + token + "\\n")
    return 0


sys.exit(main())
'''


def url_protocol_host(url: str) -> tuple[str, str] | None:
    """``(protocol, host[:port])`` of an http(s) URL as git's credential protocol names them."""
    if "://" not in url:
        return None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return None
    host = parts.netloc.rpartition("@")[2]
    return scheme, host


class GitAuth:
    """Credentials for one run; :meth:`git_env` is the environment of every runner git command."""

    def __init__(
        self,
        *,
        repo_url: str,
        token: str,
        username: str,
        token_file: str = "",
        ssh_key_file: str,
        known_hosts_file: str,
        state_dir: Path,
    ) -> None:
        self.repo_url = repo_url
        self.token = token
        self.token_file = token_file
        self.username = username
        self.ssh_key_file = ssh_key_file
        self.known_hosts_file = known_hosts_file
        self.state_dir = state_dir
        self.helper_path: Path | None = None
        self.ssh_command: str | None = None

    def prepare(self) -> None:
        """Write the credential helper and the ssh key copy into ``state_dir``."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = url_protocol_host(self.repo_url)
        if self.token_file and not self.token and not Path(self.token_file).is_file():
            log.info("git token file %s does not exist; no token is sent", self.token_file)
            self.token_file = ""
        if self.has_token and target is not None:
            if target[0] == "http" and not _is_loopback(target[1]):
                log.warning("sending the git token over plain http to %s", target[1])
            self.helper_path = self.state_dir / "git-credential-huskies.py"
            if self.helper_path.exists() or self.helper_path.is_symlink():  # the clone phase wrote it
                self.helper_path.unlink()
            self.helper_path.write_text(HELPER_SOURCE, encoding="utf-8")
            self.helper_path.chmod(0o500)
        elif self.has_token:
            log.info("a git token is set but the repo URL is not http(s); token not used")
        if self.ssh_key_file and target is None:
            self.ssh_command = self._ssh_setup()

    @property
    def has_token(self) -> bool:
        return bool(self.token or self.token_file)

    def secret_values(self) -> list[str]:
        """The token's value, for the log redactor (read from the file when it is one)."""
        if self.token:
            return [self.token]
        if self.token_file:
            try:
                value = Path(self.token_file).read_text(encoding="utf-8").strip()
            except OSError:
                return []
            return [value] if value else []
        return []

    def _ssh_setup(self) -> str | None:
        source = Path(self.ssh_key_file)
        if not source.is_file():
            log.info("ssh key file %s does not exist; ssh uses its defaults", self.ssh_key_file)
            return None
        key_copy = self.state_dir / "ssh-key"
        if key_copy.exists():
            key_copy.chmod(0o600)
        shutil.copyfile(source, key_copy)
        key_copy.chmod(0o600)
        known_hosts = self.state_dir / "known_hosts"
        options = ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=30"]
        if self.known_hosts_file and Path(self.known_hosts_file).is_file():
            shutil.copyfile(self.known_hosts_file, known_hosts)
            options += ["-o", "StrictHostKeyChecking=yes"]
        else:
            log.warning("no known_hosts file; accepting the git server's ssh host key on first use")
            options += ["-o", "StrictHostKeyChecking=accept-new"]
        options += ["-o", f"UserKnownHostsFile={known_hosts}"]
        return shlex.join(["ssh", "-i", str(key_copy), *options])

    def git_env(self, base: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in _GIT_ONLY_DROP and not k.startswith("GIT_CONFIG_")}
        for name in ("GIT_ASKPASS", "SSH_ASKPASS", "GIT_DIR", "GIT_WORK_TREE", "GIT_CONFIG_PARAMETERS"):
            env.pop(name, None)
        env["GIT_TERMINAL_PROMPT"] = "0"
        env["GCM_INTERACTIVE"] = "never"
        env["GIT_CONFIG_NOSYSTEM"] = "1"
        # Ignore ~/.gitconfig (the agent shares HOME and could have written one).
        env["GIT_CONFIG_GLOBAL"] = os.devnull
        config: list[tuple[str, str]] = [("credential.helper", "")]  # clear inherited helpers
        target = url_protocol_host(self.repo_url)
        if self.helper_path is not None and target is not None:
            config.append(("credential.helper", "!" + shlex.join([sys.executable, str(self.helper_path)])))
            if self.token:
                env[TOKEN_ENV] = self.token
                env.pop(TOKEN_FILE_ENV, None)
            else:
                env[TOKEN_FILE_ENV] = self.token_file
                env.pop(TOKEN_ENV, None)
            env[_HELPER_PROTOCOL_ENV], env[_HELPER_HOST_ENV] = target
            env[_HELPER_USER_ENV] = self.username
        else:
            env.pop(TOKEN_ENV, None)
            env.pop(TOKEN_FILE_ENV, None)
        # Hooks and fsmonitor commands from the checkout never run in the runner's git.
        config += [("core.hooksPath", os.devnull), ("core.fsmonitor", "false")]
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for index, (key, value) in enumerate(config):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        if self.ssh_command:
            env["GIT_SSH_COMMAND"] = self.ssh_command
        else:
            env.pop("GIT_SSH_COMMAND", None)
        # Stalled HTTP transfers fail instead of hanging until the git timeout.
        env.setdefault("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
        env.setdefault("GIT_HTTP_LOW_SPEED_TIME", "60")
        return env


def agent_env(base: Mapping[str, str], *, home: Path) -> dict[str, str]:
    """The agent's environment: the runner's, minus git credentials and git plumbing."""
    env = {k: v for k, v in base.items() if k not in _AGENT_DROP and not k.startswith("GIT_CONFIG_")}
    env["HOME"] = str(home)
    env.setdefault("DISABLE_AUTOUPDATER", "1")
    return env


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.strip("[]") in ("127.0.0.1", "localhost", "::1")
