"""The internal MTA's smarthost lines for an smtp [[tunnel.local]]: sendmail .mc or Postfix."""

from __future__ import annotations

import argparse
import sys

from ..relaykit.smarthost import ChooseLocal, postfix_relayhost, sendmail_mc
from . import EXIT_OK, EXIT_USAGE, load_config, verb_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(
        subparsers,
        "smarthost",
        run,
        "For the INTERNAL mail server: the sendmail.mc lines (before the MAILER "
        "lines) that send all outgoing mail to an smtp [[tunnel.local]]'s listen port, and so "
        "through the tunnel to the relay's MTA; with --postfix the main.cf relayhost line.",
    )
    parser.add_argument(
        "--postfix", action="store_true", help="write Postfix's relayhost line instead"
    )
    parser.add_argument(
        "--local", metavar="NAME", help="the smtp local to use when there are several"
    )
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's locals")


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    generate = postfix_relayhost if args.postfix else sendmail_mc
    try:
        text = generate(config, args.local, args.tunnel)
    except ChooseLocal as exc:
        print(f"tunnelkeeper: {exc} (--local NAME)", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(text)
    return EXIT_OK
