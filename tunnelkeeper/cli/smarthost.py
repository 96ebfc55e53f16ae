"""The internal MTA's smarthost lines for an smtp [[tunnel.local]]: sendmail .mc or Postfix."""

from __future__ import annotations

import argparse
import sys

from ..config import find_config, load
from ..relaykit.smarthost import ChooseLocal, postfix_relayhost, sendmail_mc
from . import EXIT_OK, EXIT_USAGE, add_config_option


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "smarthost",
        description="For the INTERNAL mail server: the sendmail.mc lines (before the MAILER "
        "lines) that send all outgoing mail to an smtp [[tunnel.local]]'s listen port, and so "
        "through the tunnel to the relay's MTA; with --postfix the main.cf relayhost line.",
    )
    add_config_option(parser)
    parser.add_argument(
        "--postfix", action="store_true", help="write Postfix's relayhost line instead"
    )
    parser.add_argument(
        "--local", metavar="NAME", help="the smtp local to use when there are several"
    )
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel's locals")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load(find_config(args.config))
    generate = postfix_relayhost if args.postfix else sendmail_mc
    try:
        text = generate(config, args.local, args.tunnel)
    except ChooseLocal as exc:
        print(f"tunnelkeeper: {exc} (--local NAME)", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(text)
    return EXIT_OK
