"""Command line: one module per verb, each a thin shell over the library.

Each verb module has `register(subparsers) -> None`, which adds its parser and sets `func` to a
`run(args) -> int`. Only the verb that runs is imported past argparse, so `--help` and the
generators start without asyncssh or rich.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import ConfigError, TunnelkeeperError

SUPERVISOR_VERBS = ("run", "status", "check", "demo", "keygen")
RELAY_VERBS = (
    "mailertable",
    "sendmail_mailer",
    "transport",
    "named_conf",
    "mx_records",
    "authorized_keys",
    "sshd_config",
    "relay_kit",
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunnelkeeper",
        description="Keeps reverse SSH tunnels for mail and DNS open through a relay, "
        "and writes the relay admin's configuration.",
    )
    parser.add_argument("--version", action="version", version=f"tunnelkeeper {__version__}")
    # argparse has no sub-command groups: verbs register without help= (so argparse lists none)
    # and the epilog lists them in SPEC §3's two groups.
    subparsers = parser.add_subparsers(metavar="COMMAND", dest="command")
    sections = [("Supervisor", SUPERVISOR_VERBS), ("Relay configuration", RELAY_VERBS)]
    lines = []
    for title, verbs in sections:
        lines.append(f"{title}:")
        for verb in verbs:
            module = importlib.import_module(f".{verb}", __name__)
            module.register(subparsers)
            lines.append(f"  {verb.replace('_', '-'):<18} {(module.__doc__ or '').strip().splitlines()[0]}")
    parser.epilog = "\n".join(lines)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="configuration file (default: $TUNNELKEEPER_CONFIG, ./tunnelkeeper.toml, "
        "$XDG_CONFIG_HOME/tunnelkeeper/config.toml)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"tunnelkeeper: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TunnelkeeperError as exc:
        print(f"tunnelkeeper: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK  # `tunnelkeeper mailertable | head` is not an error
