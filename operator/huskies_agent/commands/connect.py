"""Where the ``stories``, ``nodes`` and ``release`` commands connect, and the synced session they share.

The rendezvous URL and token are resolved the way the operator resolves them
(:meth:`Settings.load`: the settings file of ``--config``/``$HUSKIES_CONFIG``, then
``HUSKIES_*`` variables, the token from ``rendezvous_token`` or ``rendezvous_token_file``),
with ``--url`` and ``--token-file`` on top. So inside the operator's pod, where the chart
sets ``HUSKIES_CONFIG`` and ``HUSKIES_RENDEZVOUS_TOKEN_FILE``,
``kubectl exec deploy/huskies-agent -- huskies-agent stories list`` needs no flags.
The token is never taken on the command line (it would show in ``ps`` and shell history).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from huskies_agent.settings import Settings, SettingsError

if TYPE_CHECKING:
    from huskies_agent.pipeline.document import PipelineDoc
    from huskies_agent.sync.client import RendezvousClient


class CommandError(Exception):
    """A failure to report to the user as ``error: <message>`` (exit status 1)."""


class UsageError(CommandError):
    """Bad or missing arguments (exit status 2)."""


@dataclass(frozen=True)
class Target:
    """The rendezvous to talk to, and the settings it was found in (``None``: flags alone)."""

    url: str
    token: str
    settings: Settings | None = None

    @property
    def presence_interval(self) -> float:
        return (self.settings or Settings()).presence_interval_seconds

    @property
    def claim_timeout(self) -> float:
        return (self.settings or Settings()).claim_timeout_seconds


LoadSettings = Callable[[str | None, Mapping[str, str]], Settings]


def _load(config: str | None, environ: Mapping[str, str]) -> Settings:
    return Settings.load(config, environ)


def resolve_target(
    *, url: str = "", token_file: str = "", config: str | None = None,
    environ: Mapping[str, str] | None = None, load: LoadSettings = _load,
) -> Target:
    """The URL and token to use: flags first, then the installed settings (as the operator reads them).

    Raises :class:`UsageError` when no URL is found and :class:`CommandError` when a token
    file cannot be read or the settings are invalid.
    """
    environ = os.environ if environ is None else environ
    token = ""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise CommandError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise CommandError(f"--token-file {token_file}: the file is empty")
    settings: Settings | None = None
    try:
        settings = load(config, environ)
    except SettingsError as exc:
        where = config or environ.get("HUSKIES_CONFIG") or "HUSKIES_* variables"
        if not (url and token_file):
            raise CommandError(f"settings ({where}): {exc}") from None
    if not url and settings is not None:
        url = settings.rendezvous_url
    if not url:
        raise UsageError(
            "no rendezvous URL (use --url, set HUSKIES_RENDEZVOUS_URL, or point --config/HUSKIES_CONFIG "
            "at the operator's settings file)"
        )
    if not token and settings is not None:
        token = settings.rendezvous_token
    return Target(url=url, token=token, settings=settings)


class _RefuseToken(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> NoReturn:
        parser.error("the token is not taken on the command line (it would show in ps and shell history): "
                     "use --token-file FILE or set HUSKIES_RENDEZVOUS_TOKEN or HUSKIES_RENDEZVOUS_TOKEN_FILE")


def add_connection_options(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``--url``, ``--token-file``, ``--config``, ``--timeout`` (and a refusal of ``--token``).

    Added with defaults to the command and without them (``SUPPRESS``) to its actions (see
    :func:`connection_parent`), so they are accepted before or after the action.
    """

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--url", default=default(""),
                        help="rendezvous URL, e.g. ws://127.0.0.1:3001/crdt-sync (default: the settings' "
                             "rendezvous_url or $HUSKIES_RENDEZVOUS_URL)")
    parser.add_argument("--token-file", default=default(""), metavar="FILE",
                        help="file holding the bearer token (default: the settings' token, "
                             "$HUSKIES_RENDEZVOUS_TOKEN or $HUSKIES_RENDEZVOUS_TOKEN_FILE)")
    parser.add_argument("--config", default=default(None), metavar="FILE",
                        help="the operator's settings file (default: $HUSKIES_CONFIG, as set in its pod)")
    parser.add_argument("--timeout", type=float, default=default(10.0), metavar="SECONDS",
                        help="seconds to wait for the sync and for the confirmation of an edit (default 10)")
    parser.add_argument("--token", nargs="?", action=_RefuseToken, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def connection_parent() -> argparse.ArgumentParser:
    """The connection options without defaults, as a parent parser for a command's actions."""
    parent = argparse.ArgumentParser(add_help=False)
    add_connection_options(parent, defaults=False)
    return parent


def target_from(args: argparse.Namespace) -> Target:
    return resolve_target(url=args.url, token_file=args.token_file, config=args.config)


def run_command(body: Callable[[argparse.Namespace], Coroutine[Any, Any, str]], args: argparse.Namespace) -> int:
    """Run one command's coroutine: print its output; errors as one line (exit 2 usage, 1 otherwise)."""
    quiet_sync_logs()
    try:
        output = asyncio.run(body(args))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0


def quiet_sync_logs() -> None:
    """The commands report failures themselves; keep the client's retry chatter out."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("huskies_agent.sync").setLevel(logging.CRITICAL)


@contextlib.asynccontextmanager
async def synced(target: Target, timeout: float) -> AsyncIterator[tuple[PipelineDoc, RendezvousClient]]:
    """A document synced with the rendezvous (one attempt; errors become :class:`CommandError`)."""
    from huskies_agent.pipeline.document import PipelineDoc
    from huskies_agent.sync.client import RendezvousClient, RendezvousUnavailable

    doc = PipelineDoc()
    try:
        client = RendezvousClient(
            doc, target.url, token=target.token, max_failures=1, open_timeout=timeout, ping_interval=None
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    async with client:
        try:
            await client.wait_synced(timeout)
        except RendezvousUnavailable as exc:
            raise CommandError(str(exc)) from None
        except TimeoutError:
            raise CommandError(f"no sync with the rendezvous at {target.url} within {timeout:g} s") from None
        yield doc, client


async def confirm(client: RendezvousClient, target: Target, timeout: float) -> None:
    if not await client.confirm(timeout):
        raise CommandError(
            f"the rendezvous at {target.url} did not confirm the edit within {timeout:g} s"
            " (it may or may not have been applied)"
        )
