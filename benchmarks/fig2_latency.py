"""Figure 2: connect latency — connect, read the 220 greeting, close; sequential."""

from __future__ import annotations

import socket
import time

from .harness import (
    Env,
    Figure,
    Target,
    figure_main,
    fmt_x,
    median,
    p95,
    ports,
    ratio,
    time_limit,
)


def one(port: int, timeout: float = 5.0) -> float:
    """Seconds for connect + 220 greeting + close through the forward on `port`."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(256)
            if not chunk:
                raise RuntimeError("closed before the greeting")
            data += chunk
    elapsed = time.perf_counter() - t0
    if not data.startswith(b"220"):
        raise RuntimeError(f"bad greeting {data!r}")
    return elapsed


def run(quick: bool = False) -> Figure:
    runs, per_run = (1, 20) if quick else (5, 200)
    with time_limit(60 if quick else 180), Env("latency") as env:
        tk_port, ssh_port = ports(2)
        clients = [env.tunnelkeeper([tk_port]), env.ssh([ssh_port])]
        for client in clients:
            client.start()
        for client in clients:
            client.wait_ready()
        medians: dict[str, list[float]] = {c.label: [] for c in clients}
        tails: dict[str, list[float]] = {c.label: [] for c in clients}
        for client in clients:  # warm-up
            for _ in range(10):
                one(client.listens[0])
        for _ in range(runs):  # interleaved A B A B
            for client in clients:
                samples = [one(client.listens[0]) for _ in range(per_run)]
                medians[client.label].append(median(samples))
                tails[client.label].append(p95(samples))
    tk_med, ssh_med = median(medians["tunnelkeeper"]), median(medians["ssh -R"])
    tk_p95, ssh_p95 = median(tails["tunnelkeeper"]), median(tails["ssh -R"])
    x_med, x_p95 = ratio(tk_med, ssh_med), ratio(tk_p95, ssh_p95)
    table = [
        ["client", "median", "p95", "median vs ssh -R", "p95 vs ssh -R"],
        [
            "tunnelkeeper",
            f"{tk_med * 1e3:.2f} ms",
            f"{tk_p95 * 1e3:.2f} ms",
            fmt_x(x_med),
            fmt_x(x_p95),
        ],
        ["ssh -R", f"{ssh_med * 1e3:.2f} ms", f"{ssh_p95 * 1e3:.2f} ms", "1.00×", "1.00×"],
    ]
    return Figure(
        "2",
        "Connect latency (connect + 220 greeting + close)",
        table,
        [
            Target("latency median vs ssh -R", fmt_x(x_med), "≤ 2×", x_med <= 2.0),
            Target("latency p95 vs ssh -R", fmt_x(x_p95), "≤ 1×", x_p95 <= 1.0),
        ],
        [
            f"{runs} runs of {per_run} sequential connections per client, interleaved; the "
            "table shows the median over runs of each run's median and p95."
        ],
    )


if __name__ == "__main__":
    figure_main(run)
