"""sendmail mailer definitions that dial the tunnel ports."""

from __future__ import annotations

import argparse
import sys

from ..relaykit.sendmail import mailer_definitions, mailer_definitions_m4
from . import EXIT_OK, load_config, verb_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(
        subparsers,
        "sendmail-mailer",
        run,
        "The sendmail mailers the mailertable names: copies of the esmtp mailer "
        "that dial a tunnel port. sendmail.cf M lines, or with --m4 the sendmail.mc text.",
    )
    parser.add_argument("--m4", action="store_true", help="write the sendmail.mc (m4) text")
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's forwards")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    generate = mailer_definitions_m4 if args.m4 else mailer_definitions
    sys.stdout.write(generate(config, args.tunnel))
    return EXIT_OK
