"""The command line as a user meets it: --version, global flags anywhere, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from huskies_agent import __version__, cli


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "huskies_agent", *argv], capture_output=True, text=True,
                          timeout=60)


def test_version_flag_and_command() -> None:
    assert _run("--version").stdout.strip() == f"huskies-agent {__version__}"
    assert _run("version").stdout.strip() == __version__


def test_bad_log_level_is_a_usage_error_not_a_traceback() -> None:
    done = _run("--log-level", "foo", "crd")
    assert done.returncode == 2
    assert "invalid choice: 'FOO'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [["--log-level", "debug", "crd"], ["crd", "--log-level", "debug"]])
def test_global_flags_before_or_after_the_command(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.log_level == "DEBUG" and args.command == "crd"


def test_flag_after_command_keeps_the_earlier_value_when_absent() -> None:
    args = cli.build_parser().parse_args(["--log-format", "text", "crd"])
    assert args.log_format == "text" and args.log_level == "INFO"


def test_a_failing_command_prints_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(args: object) -> int:
        raise RuntimeError("rendezvous at ws://x:1/crdt-sync refused the connection")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["crd"].set_defaults(_run=boom)  # type: ignore[union-attr]
    assert cli.main(["crd"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "huskies-agent crd: error: rendezvous at ws://x:1/crdt-sync refused the connection"
