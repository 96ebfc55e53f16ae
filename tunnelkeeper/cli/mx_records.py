"""Zone-file MX lines: internal host at 0, relay at 10."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from ..relaykit.mx import mx_records
from . import EXIT_OK, load_config, verb_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(
        subparsers,
        "mx-records",
        run,
        "Zone-file MX lines for every smtp forward's domains: the internal host at "
        "preference 0, the relay at 10, every name absolute.",
    )
    parser.add_argument(
        "--internal-host", metavar="NAME", required=True, help="the internal mail host's name"
    )
    parser.add_argument("--relay-host", metavar="NAME", required=True, help="the relay's name")
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")


FLAGS = {"internal_host": "--internal-host", "relay_host": "--relay-host"}


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    try:
        records = mx_records(config, args.internal_host, args.relay_host, args.tunnel)
    except ConfigError as exc:
        if exc.key not in FLAGS:
            raise
        raise ConfigError(f"{FLAGS[exc.key]}: {exc.detail}") from None
    sys.stdout.write(records)
    return EXIT_OK
