"""The ``huskies-agent`` command line.

Each subcommand lives in its own module exposing ``configure(parser)`` and
``run(args) -> int``; heavy imports happen inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from huskies_agent import __version__

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("huskies_agent.commands.operator_cmd", "run the operator (build node) against a cluster"),
    "rendezvous": ("huskies_agent.commands.rendezvous_cmd", "serve a pipeline document at /crdt-sync"),
    "stories": ("huskies_agent.commands.stories_cmd", "list and edit stories on a rendezvous"),
    "nodes": ("huskies_agent.commands.nodes_cmd", "list the build nodes: seen alive, free slots, cluster"),
    "release": ("huskies_agent.commands.release_cmd", "free a dead node's claims now (a person's move)"),
    "run-story": ("huskies_agent.commands.run_story_cmd", "run one story (the build Job's entrypoint)"),
    "demo": ("huskies_agent.commands.demo_cmd", "local demo: control plane, rendezvous, operator, a story"),
    "crd": ("huskies_agent.commands.crd_cmd", "print the StoryJob CustomResourceDefinition"),
}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand (``huskies-agent stories --log-level DEBUG``).

    The subcommand's copy has no defaults, so it only overrides what was given before it.
    """
    parent = argparse.ArgumentParser(add_help=False)
    level_default: object = "INFO" if defaults else argparse.SUPPRESS
    format_default: object = None if defaults else argparse.SUPPRESS
    parent.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        default=level_default, help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    parent.add_argument("--log-format", choices=("json", "text"), default=format_default,
                        help="log format (default: json when not a terminal)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="huskies-agent",
        description="Kubernetes build capacity for a huskies story pipeline.",
        parents=[_global_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"huskies-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version")
    late = _global_options(defaults=False)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # subcommand not built into this version
        cmd = sub.add_parser(name, help=help_text, description=help_text, parents=[late])
        module.configure(cmd)
        _also_in_actions(cmd, late)
        cmd.set_defaults(_run=module.run)
    return parser


def _also_in_actions(command: argparse.ArgumentParser, late: argparse.ArgumentParser) -> None:
    """Accept the global options after a command's action too (``stories list --log-level DEBUG``)."""
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child._add_container_actions(late)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "version":
        print(__version__)
        return 0
    from huskies_agent.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    try:
        result: int = args._run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error; the traceback only when asked for
        if args.log_level == "DEBUG":
            raise
        print(f"huskies-agent {args.command}: error: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
