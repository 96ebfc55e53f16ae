"""`python -m benchmarks`: run every figure and write BENCHMARKS.md (see --help)."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import (
    fig1_throughput,
    fig2_latency,
    fig3_concurrency,
    fig4_recovery,
    fig5_frozen,
    fig6_footprint,
    fig7_startup,
    fig8_zone_transfer,
)
from .harness import ROOT, Figure, timed
from .report import environment, render

FIGURES: dict[str, tuple[str, Callable[[bool], Figure]]] = {
    "1": ("Throughput", fig1_throughput.run),
    "2": ("Connect latency", fig2_latency.run),
    "3": ("Concurrency", fig3_concurrency.run),
    "4": ("Recovery", fig4_recovery.run),
    "5": ("Frozen relay", fig5_frozen.run),
    "6": ("Footprint", fig6_footprint.run),
    "7": ("CLI start-up", fig7_startup.run),
    "8": ("Zone transfer", fig8_zone_transfer.run),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="minimal counts (a smoke test)")
    parser.add_argument(
        "--only", metavar="N[,N]", help="figures to run, e.g. 1,4 (default: all eight)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="report file (default: BENCHMARKS.md for a full run of every figure, else stdout)",
    )
    args = parser.parse_args(argv)
    keys = args.only.split(",") if args.only else list(FIGURES)
    unknown = [k for k in keys if k not in FIGURES]
    if unknown:
        parser.error(f"no figure {', '.join(unknown)} (there are {', '.join(FIGURES)})")
    out = args.out
    if out is None and not args.quick and keys == list(FIGURES):
        out = ROOT / "BENCHMARKS.md"

    env = environment()  # before the run: the load average says what else the machine did
    started = time.monotonic()
    figures = []
    for key in keys:
        title, run = FIGURES[key]
        print(f"figure {key}: {title} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            fig = timed(run, args.quick)
        except Exception as exc:  # a broken figure is reported, the others still run
            traceback.print_exc()
            fig = Figure(key, title, [], error=f"{type(exc).__name__}: {exc}")
            fig.seconds = time.monotonic() - t0
        print(f"figure {key}: done in {fig.seconds:.0f} s", file=sys.stderr, flush=True)
        figures.append(fig)
    env["whole run"] = f"{time.monotonic() - started:.0f} s" + (" (--quick)" if args.quick else "")
    text = render(figures, env, out)
    if out is None:
        print(text)
    else:
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    return 1 if any(fig.error for fig in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
