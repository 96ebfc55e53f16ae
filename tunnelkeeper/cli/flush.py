"""Ask each tunnel's relay MTA to deliver now the mail it holds for the smtp forwards'
domains (SMTP ETRN), through the running supervisor's connection or one of our own."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .. import config, control
from ..checks import etrn
from ..errors import ConfigError, ControlError
from ..peertext import peer_text
from . import EXIT_FAILURE, EXIT_OK, check_tunnel_files, load_config, verb_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(subparsers, "flush", run, __doc__ or "")
    parser.add_argument("--tunnel", metavar="NAME", help="only this tunnel")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.tunnel is not None:
        cfg.tunnel_named(args.tunnel)  # ConfigError (exit 2) for a name not in the file
    wanted = [t for t in cfg.tunnel if args.tunnel in (None, t.name)]
    if not any(f.service == "smtp" and f.domains for t in wanted for f in t.forward):
        raise ConfigError(
            "no smtp forward names domains to flush", path=str(cfg.path), key="tunnel"
        )
    via, answers = asyncio.run(_flush(cfg, args.tunnel))
    if args.json:
        print(json.dumps({"via": via, "flushed": answers}, indent=2))
    else:
        _print_plain(via, answers)
    return EXIT_OK if answers and all(a.get("ok") is True for a in answers) else EXIT_FAILURE


async def _flush(cfg: config.Config, tunnel: str | None) -> tuple[str, list[dict[str, Any]]]:
    try:
        await control.fetch_status(cfg.control_socket, 2.0)
    except ControlError:
        check_tunnel_files(cfg)  # our own connection: the same checks as `check`
        return "own connection", await etrn.flush_own(cfg, tunnel)
    return "supervisor", await control.request_flush(cfg.control_socket, tunnel)


def _print_plain(via: str, answers: list[dict[str, Any]]) -> None:
    out = sys.stdout
    said = (
        "the running supervisor's connection" if via == "supervisor" else "a connection of its own"
    )
    out.write(f"through {said}:\n")
    refused = False
    for a in answers:
        # Escaped again: a supervisor's reply is read from a socket.
        reply = peer_text(str(a.get("reply", "")))
        verdict = "ok" if a.get("ok") is True else f"FAILED [{a.get('outcome')}]"
        refused = refused or a.get("outcome") == "refused"
        who = peer_text(f"{a.get('tunnel')}/{a.get('forward')} {a.get('domain')}")
        out.write(f"{who}: {verdict}: {peer_text(str(a.get('command')))}: {reply}\n")
    if refused:
        out.write(f"to have held mail delivered when the way in is whole again: {etrn.HINT}\n")
