"""One-shot check: connect, verify, authenticate, try each forward and probe."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .. import config, control, filetrust, ssh
from ..checker import check
from ..errors import ControlError
from ..state import SupervisorStatus
from . import add_config_option


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("check", description=__doc__)
    add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON (SPEC §4)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config.load(config.find_config(args.config))
    ssh.preflight(cfg.tunnel)
    filetrust.check_tunnel_files(cfg)
    if not filetrust.strict_modes():
        print(
            f"tunnelkeeper: {filetrust.STRICT_MODES_ENV}=no: files other users may change "
            "are trusted",
            file=sys.stderr,
        )
    result = asyncio.run(_check(cfg))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_plain(result)
    return result.exit_code()


async def _check(cfg: config.Config) -> SupervisorStatus:
    try:
        running: SupervisorStatus | None = await control.fetch_status(cfg.control_socket, 2.0)
    except ControlError:
        running = None
    return await check(cfg, running)


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
            out.write(
                f"  forward {fwd.name} {fwd.listen} -> {fwd.target}: {fwd.state}{error}{how}\n"
            )
