"""The relay's sshd Match User block."""

from __future__ import annotations

import argparse
import sys

from ..config import find_config, load
from ..relaykit.openssh import sshd_config
from . import EXIT_OK, add_config_option


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sshd-config",
        description="A Match User block for the relay's sshd_config: only the configured "
        "forwards, no tty, keepalives that free a dead client's listeners in time.",
    )
    add_config_option(parser)
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(sshd_config(load(find_config(args.config)), args.tunnel))
    return EXIT_OK
