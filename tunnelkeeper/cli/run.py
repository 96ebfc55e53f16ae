"""Run the supervisor in the foreground (dashboard on a terminal)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable

from .. import logs, services
from ..forwarding import limits
from ..supervisor import Supervisor, serve
from . import (
    EXIT_FAILURE,
    EXIT_OK,
    add_dashboard_option,
    check_tunnel_files,
    early,
    load_config,
    verb_parser,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verb_parser(subparsers, "run", run, __doc__)
    add_dashboard_option(parser)
    parser.add_argument(
        "--allow-root",
        action="store_true",
        help="run even as uid 0 (not recommended: use an unprivileged user)",
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if os.geteuid() == 0 and not (args.allow_root or cfg.supervisor.allow_root):
        print(
            "tunnelkeeper: refusing to run as root: the tunnels need no privilege (relay "
            "listens and local targets are ordinary sockets); run as an unprivileged user, "
            "or pass --allow-root / set allow_root = true",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    check_tunnel_files(cfg)
    limits.raise_nofile()
    dashboard = sys.stdout.isatty() if args.dashboard is None else args.dashboard
    supervisor = Supervisor(cfg, services=services.standard(cfg, dashboard=dashboard))
    logs.setup(cfg.supervisor.log_level)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(supervisor, pending=early.take))
    return EXIT_OK


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (the `fast` extra), else asyncio's own: it
    spends about a tenth less CPU per forwarded byte (benchmarks/fig1_throughput)."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
