"""The relay account's locked-down authorized_keys line."""

from __future__ import annotations

import argparse
import sys

from ..relaykit import dropbear, openssh
from ..relaykit.common import SSH_SERVERS
from . import EXIT_OK, load_config, verb_parser


def add_sshd_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sshd",
        choices=SSH_SERVERS,
        default="openssh",
        help="the relay's SSH server (default openssh); Dropbear understands fewer key options",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(
        subparsers,
        "authorized-keys",
        run,
        "The line for the relay account's authorized_keys: restrict, the "
        "configured listens and nothing else, then the public key from IDENTITY.pub. "
        "With --sshd dropbear, the options Dropbear accepts, and what it cannot limit.",
    )
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel")
    add_sshd_option(parser)


def run(args: argparse.Namespace) -> int:
    generate = dropbear.authorized_keys if args.sshd == "dropbear" else openssh.authorized_keys
    sys.stdout.write(generate(load_config(args), args.tunnel))
    return EXIT_OK
