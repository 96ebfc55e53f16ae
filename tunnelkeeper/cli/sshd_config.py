"""The relay's sshd Match User block."""

from __future__ import annotations

import argparse
import sys

from ..relaykit.openssh import sshd_config
from . import EXIT_OK, load_config, verb_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(
        subparsers,
        "sshd-config",
        run,
        "A Match User block for the relay's sshd_config: only the configured "
        "forwards, no tty, keepalives that free a dead client's listeners in time.",
    )
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel")


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(sshd_config(load_config(args), args.tunnel))
    return EXIT_OK
