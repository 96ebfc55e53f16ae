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
    # `pty` on the key line only for `ssh -tt`; tunnelkeeper and `ssh -N` open no session.
    key_options = "restrict,port-forwarding,pty"
    with time_limit(60 if quick else 180), Env("latency", key_options) as env:
        tk_port, ssh_port, tty_port = ports(3)
        clients = [env.tunnelkeeper([tk_port]), env.ssh([ssh_port]), env.ssh_tty([tty_port])]
        for client in clients:
            client.start()
        for client in clients:
            client.wait_ready()
        medians: dict[str, list[float]] = {c.label: [] for c in clients}
        tails: dict[str, list[float]] = {c.label: [] for c in clients}
        for client in clients:  # warm-up
            for _ in range(10):
                one(client.listens[0])
        for _ in range(runs):  # interleaved A B C A B C
            for client in clients:
                samples = [one(client.listens[0]) for _ in range(per_run)]
                medians[client.label].append(median(samples))
                tails[client.label].append(p95(samples))
    med = {label: median(values) for label, values in medians.items()}
    tail = {label: median(values) for label, values in tails.items()}
    tk = "tunnelkeeper"
    table = [["client", "median", "p95", "tunnelkeeper median ÷ this", "tunnelkeeper p95 ÷ this"]]
    for label in med:
        table.append(
            [
                label,
                f"{med[label] * 1e3:.2f} ms",
                f"{tail[label] * 1e3:.2f} ms",
                fmt_x(ratio(med[tk], med[label])),
                fmt_x(ratio(tail[tk], tail[label])),
            ]
        )
    x_med, x_p95 = ratio(med[tk], med["ssh -R"]), ratio(tail[tk], tail["ssh -R"])
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
            "table shows the median over runs of each run's median and p95.",
            "`ssh -R` is `ssh -N -R`, as autossh and service units run it: without a terminal "
            "OpenSSH leaves Nagle on, so a connection meets its 40 ms delayed-ACK stall or not "
            "depending on how the relay's packets fall (some runs most of the time, some hardly "
            "ever). `ssh -R, tty` is the same forward beside a `-tt` session (`sleep`): for a "
            "session with a terminal sshd and ssh turn Nagle off, and the stall never comes: "
            "OpenSSH at its fastest. tunnelkeeper acknowledges every read at once and opens no "
            "session.",
        ],
    )


if __name__ == "__main__":
    figure_main(run)
