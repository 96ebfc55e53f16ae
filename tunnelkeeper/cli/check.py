"""One-shot check: connect, verify, authenticate, try each forward and probe."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from typing import Any

from .. import config, control
from ..checks.boundary import Boundary
from ..checks.checker import check_and_prove, check_mail
from ..checks.mailtest import MailTest
from ..errors import ControlError
from ..state import SupervisorStatus
from . import EXIT_FAILURE, EXIT_OK, check_tunnel_files, load_config, seconds, verb_parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(subparsers, "check", run, __doc__)
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON (the status schema)"
    )
    parser.add_argument(
        "--mail",
        action="store_true",
        help="also send a test message for every smtp forward's domains to the relay's own "
        "MTA and report whether, and how fast, it came back through the tunnel",
    )
    parser.add_argument(
        "--mail-timeout",
        type=functools.partial(seconds, at_most=600.0),
        default=60.0,
        metavar="S",
        help="how long to wait for each test message (default 60)",
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    check_tunnel_files(cfg)
    result, proofs, mail = asyncio.run(_check(cfg, args.mail_timeout if args.mail else None))
    if args.json:
        document = result.to_json()
        _add_boundary(document, proofs)
        if mail is not None:
            document["mail"] = [test.to_json() for test in mail]
        print(json.dumps(document, indent=2))
    else:
        _print_plain(result)
        _print_boundary(proofs)
        for test in mail or []:
            verdict = "ok" if test.ok else f"FAILED [{test.outcome}]"
            print(f"mail {test.tunnel}/{test.forward} postmaster@{test.domain}: {verdict}")
            print(f"  {test.detail}")
    if mail is not None:
        if not mail:
            print(
                "tunnelkeeper: check --mail: no smtp forward names domains to test", file=sys.stderr
            )
        passed = mail and all(test.ok for test in mail)
        return EXIT_OK if passed and not any(p.failed for p in proofs) else EXIT_FAILURE
    # A boundary that lets the relay in fails the check even when every forward is up.
    breached = EXIT_FAILURE if any(p.failed for p in proofs) else EXIT_OK
    return max(result.exit_code(), breached)


async def _check(
    cfg: config.Config, mail_timeout: float | None
) -> tuple[SupervisorStatus, list[Boundary], list[MailTest] | None]:
    try:
        running: SupervisorStatus | None = await control.fetch_status(cfg.control_socket, 2.0)
    except ControlError:
        running = None
    result, proofs = await check_and_prove(cfg, running)
    if mail_timeout is None:
        return result, proofs, None
    return result, proofs, await check_mail(cfg, running, mail_timeout)


def _add_boundary(document: dict[str, Any], proofs: list[Boundary]) -> None:
    """Each proof's keys (`open_relay`, `transfers`) into its forward's object."""
    found = {(p.tunnel, p.forward): p for p in proofs}
    for tunnel in document["tunnels"]:
        for fwd in tunnel["forwards"]:
            proof = found.get((tunnel["name"], fwd["name"]))
            if proof is not None:
                fwd.update(proof.to_json())


def _print_boundary(proofs: list[Boundary]) -> None:
    for proof in proofs:
        if proof.service == "smtp":
            verdict = {True: "OPEN RELAY", False: "ok", None: "not tried"}[proof.open_relay]
            print(f"boundary {proof.tunnel}/{proof.forward}: {verdict}")
            print(f"  {proof.detail}")
            continue
        for transfer in proof.transfers:
            verdict = {True: "ok", False: "REFUSED", None: "not tried"}[transfer.ok]
            print(f"boundary {proof.tunnel}/{proof.forward} transfer {transfer.zone}: {verdict}")
            if transfer.ok is None:
                print(f"  {transfer.detail}")
        if proof.failed:
            print(f"  {proof.detail}")


def _print_plain(result: SupervisorStatus) -> None:
    out = sys.stdout
    for tunnel in result.tunnels:
        verdict = "ok" if tunnel.state == "up" else f"FAILED [{tunnel.error_kind}]"
        out.write(f"tunnel {tunnel.name} ({tunnel.relay}): {verdict}")
        out.write(f", cipher {tunnel.cipher}\n" if tunnel.cipher else "\n")
        if tunnel.last_error:
            out.write(f"  {tunnel.last_error}\n")
        for fwd in tunnel.forwards:
            probe = fwd.probe
            how = ""
            if probe is not None:
                latency = f" {probe.latency_ms:.1f} ms" if probe.latency_ms is not None else ""
                how = (
                    f"; probe {'ok' if probe.ok else 'FAILED'}{latency} via {probe.via}: "
                    f"{probe.detail}"
                )
            error = f" ({fwd.error})" if fwd.error else ""
            # A local listens here and its target is as the relay sees it.
            path = (
                f"local {fwd.name} {fwd.listen} -> relay -> {fwd.target}"
                if fwd.direction == "local"
                else f"forward {fwd.name} {fwd.listen} -> {fwd.target}"
            )
            if fwd.direction != "local":
                path += f" from {fwd.source}" if fwd.source else " from the kernel's choice"
            out.write(f"  {path}: {fwd.state}{error}{how}\n")
            if fwd.direction != "local" and fwd.source is None and fwd.target.startswith("[::1]"):
                out.write(
                    "    note: Linux has one IPv6 loopback address, so the target sees this "
                    "forward's connections come from ::1, like its own host's; set `source` to "
                    "another local address (or use a 127.x target, reached from 127.0.0.2)\n"
                )
