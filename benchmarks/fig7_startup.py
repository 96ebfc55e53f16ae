"""Figure 7: CLI start-up — `tunnelkeeper mailertable` and `--help` wall time, `ssh -V` as floor."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .harness import (
    PYTHON,
    ROOT,
    SSH,
    Figure,
    Target,
    figure_main,
    fmt_x,
    median,
    p95,
    ratio,
    time_limit,
)

EXAMPLE = ROOT / "examples" / "tunnelkeeper.toml"
LIMIT = 0.3  # seconds, the target for generators and --help


def entry_point() -> list[str]:
    """The installed `tunnelkeeper` script beside this interpreter, else `python -m`."""
    script = Path(PYTHON).parent / "tunnelkeeper"
    if script.exists():
        return [str(script)]
    found = shutil.which("tunnelkeeper")
    return [found] if found else [PYTHON, "-m", "tunnelkeeper"]


def wall(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=30, cwd=ROOT
    )
    return time.perf_counter() - t0


def run(quick: bool = False) -> Figure:
    runs = 3 if quick else 20
    tk = entry_point()
    commands = {
        "tunnelkeeper mailertable -c examples/tunnelkeeper.toml": [
            *tk,
            "mailertable",
            "-c",
            str(EXAMPLE),
        ],
        "tunnelkeeper --help": [*tk, "--help"],
        "ssh -V (floor)": [SSH, "-V"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with time_limit(60 if quick else 120):
        for args in commands.values():  # warm the page cache
            wall(args)
        for _ in range(runs):  # interleaved A B C A B C
            for name, args in commands.items():
                times[name].append(wall(args))
    floor = median(times["ssh -V (floor)"])
    table = [["command", "median", "p95", "vs ssh -V"]]
    targets = []
    for name, values in times.items():
        table.append(
            [
                f"`{name}`",
                f"{median(values) * 1e3:.0f} ms",
                f"{p95(values) * 1e3:.0f} ms",
                fmt_x(ratio(median(values), floor)),
            ]
        )
        if name.startswith("tunnelkeeper"):
            m = median(values)
            label = name.split(" -c")[0]
            targets.append(
                Target(f"`{label}` wall time", f"{m * 1e3:.0f} ms", "≤ 300 ms", m <= LIMIT)
            )
    return Figure(
        "7",
        "CLI start-up",
        table,
        targets,
        [
            f"{runs} runs each, interleaved, after one warm-up; wall time of the whole process "
            f"(`{' '.join(tk)}`), output to /dev/null. The generators need no keys and import "
            "neither asyncssh nor rich.",
        ],
    )


if __name__ == "__main__":
    figure_main(run)
