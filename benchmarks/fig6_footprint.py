"""Figure 6: footprint — RSS and idle CPU for 1, 20 and 100 tunnels vs as many autossh+ssh."""

from __future__ import annotations

import time

from .harness import (
    Client,
    Env,
    Figure,
    Target,
    cpu_seconds,
    figure_main,
    fmt_x,
    memory_kb,
    ports,
    ratio,
    time_limit,
)

SETTLE = 3.0  # after every forward answers, before measuring


def measure(client: Client, window: float) -> tuple[float, float, float, int]:
    """(RSS MB, PSS MB, idle CPU % of one core, processes) of a running client."""
    client.wait_ready(120)
    time.sleep(SETTLE)
    pids = client.pids()
    rss = pss = 0
    for pid in pids:
        r, p = memory_kb(pid)
        rss, pss = rss + r, pss + p
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    time.sleep(window)
    cpu = (cpu_seconds(pids) - cpu0) / (time.monotonic() - t0) * 100
    return rss / 1024, pss / 1024, cpu, len(pids)


def run(quick: bool = False) -> Figure:
    sizes, window = ((1, 3), 2.0) if quick else ((1, 20, 100), 15.0)
    rows: dict[tuple[int, str], tuple[float, float, float, int]] = {}
    with time_limit(90 if quick else 300), Env("footprint") as env:
        for n in sizes:
            listens = ports(n)
            for client in (env.tunnelkeeper(listens), env.autossh(listens)):  # A B per size
                with client:
                    rows[n, client.label] = measure(client, window)
    table = [["tunnels", "client", "processes", "RSS", "PSS", "idle CPU", "RSS vs autossh"]]
    for n in sizes:
        base = rows[n, "autossh"][0]
        for label in ("tunnelkeeper", "autossh"):
            rss, pss, cpu, procs = rows[n, label]
            table.append(
                [
                    str(n),
                    label + ("" if label == "tunnelkeeper" else "+ssh"),
                    str(procs),
                    f"{rss:.1f} MB",
                    f"{pss:.1f} MB",
                    f"{cpu:.2f} %",
                    fmt_x(ratio(rss, base)),
                ]
            )
    targets = []
    if 20 in sizes:
        rss, _, cpu, _ = rows[20, "tunnelkeeper"]
        targets += [
            Target("20 tunnels: RSS", f"{rss:.1f} MB", "≤ 60 MB", rss <= 60),
            Target("20 tunnels: idle CPU", f"{cpu:.2f} %", "< 1 %", cpu < 1),
        ]
    if 100 in sizes:
        targets.append(Target("100 tunnels work", "all 100 forwards answered", "work", True))
    return Figure(
        "6",
        "Footprint: many tunnels in one supervisor vs one autossh+ssh pair per tunnel",
        table,
        targets,
        [
            "All tunnels go to the same sshd, one connection each, with distinct listen ports "
            "and the same sink. Keepalive every 5 s with 3 misses on both sides "
            "(ServerAliveInterval 5, CountMax 3); tunnelkeeper probes off (autossh has none).",
            f"Measured {SETTLE:g} s after every forward answered; idle CPU is utime+stime over "
            f"{window:g} s, in % of one core, summed over the client's processes. RSS counts "
            "shared pages (libc, libcrypto) once per process; PSS splits them among sharers.",
        ],
    )


if __name__ == "__main__":
    figure_main(run)
