"""Everything on this machine: embedded relay, mail flowing, recovery."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .. import logs
from ..demo import running_demo
from ..supervisor import serve
from . import EXIT_OK, add_dashboard_option, seconds


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", description=__doc__)
    add_dashboard_option(parser)
    parser.add_argument(
        "--duration",
        type=seconds,
        metavar="SECONDS",
        help="stop by itself after this long (default: run until Ctrl-C)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dashboard = sys.stdout.isatty() if args.dashboard is None else args.dashboard
    logs.setup("info")
    asyncio.run(_demo(args.duration, dashboard))
    return EXIT_OK


async def _demo(duration: float | None, dashboard: bool) -> None:
    async with running_demo(dashboard=dashboard) as (supervisor, _relay, stats):
        await serve(supervisor, stop_after=duration)
    print(
        f"demo: {stats.delivered} of {stats.sent} messages delivered through the tunnel, "
        f"{stats.refused} refused while it was down (a real relay queues and retries those)",
        file=sys.stderr,
    )
