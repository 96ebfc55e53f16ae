"""Figure 1: throughput — bytes pushed into the relay's listen port until the sink has them."""

from __future__ import annotations

import os
import socket
import time

from .harness import (
    Env,
    Figure,
    Target,
    cpu_seconds,
    figure_main,
    fmt_x,
    median,
    ports,
    ratio,
    time_limit,
)

CHUNK = memoryview(os.urandom(1 << 20))  # random: nothing on the path may compress it


def push(port: int, nbytes: int, timeout: float = 120.0) -> float:
    """Send `nbytes` through the forward on `port`; seconds until the sink acknowledged all."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reply = b""
        while b"\n" not in reply:
            reply += sock.recv(256)
        t0 = time.perf_counter()
        sock.sendall(f"SINK {nbytes}\r\n".encode())
        left = nbytes
        while left:
            piece = CHUNK[: min(left, len(CHUNK))]
            sock.sendall(piece)
            left -= len(piece)
        reply = b""
        while b"OK" not in reply:
            data = sock.recv(256)
            if not data:
                raise RuntimeError("sink closed before acknowledging")
            reply += data
        return time.perf_counter() - t0


def run(quick: bool = False) -> Figure:
    runs, size = (1, 4 << 20) if quick else (15, 256 << 20)
    with time_limit(60 if quick else 240), Env("throughput") as env:
        tk_port, ssh_port = ports(2)
        clients = [env.tunnelkeeper([tk_port]), env.ssh([ssh_port])]
        for client in clients:
            client.start()
        for client in clients:
            client.wait_ready()
        rates: dict[str, list[float]] = {c.label: [] for c in clients}
        # CPU seconds per GB: client, the relay's session, the sink (stabler than MB/s on a
        # small machine where all four processes share the cores)
        cpu: dict[str, list[tuple[float, float, float]]] = {c.label: [] for c in clients}
        push(tk_port, 1 << 20)  # warm both paths (first packets, window growth)
        push(ssh_port, 1 << 20)
        for _ in range(runs):  # interleaved A B A B
            for client in clients:
                groups = [client.pids(), env.sshd.session_of(client.listens[0]), env.sink_pids()]
                before = [cpu_seconds(g) for g in groups]
                rates[client.label].append(size / push(client.listens[0], size) / 1e6)
                used = [
                    (cpu_seconds(g) - b) / (size / 1e9) for g, b in zip(groups, before, strict=True)
                ]
                cpu[client.label].append((used[0], used[1], used[2]))
        tk, ssh = median(rates["tunnelkeeper"]), median(rates["ssh -R"])
        cipher = next(
            (
                line.split("cipher ")[-1]
                for line in clients[0].log().splitlines()
                if "cipher" in line
            ),
            "?",
        )
    # Each tunnelkeeper run is paired with the ssh -R run right after it: the median of the
    # pairs' ratios cancels the load other work puts on a shared machine as it drifts.
    pairs = [ratio(a, b) for a, b in zip(rates["tunnelkeeper"], rates["ssh -R"], strict=True)]
    x = median(pairs)
    table = [["client", "MB/s (median)", "vs ssh -R", "CPU s/GB: client / relay / sink", "runs"]]
    for label, value in (("tunnelkeeper", tk), ("ssh -R", ssh)):
        per_gb = " / ".join(f"{median([c[i] for c in cpu[label]]):.2f}" for i in range(3))
        row = [label, f"{value:.0f}", fmt_x(ratio(value, ssh)), per_gb]
        table.append([*row, " ".join(f"{r:.0f}" for r in rates[label])])
    return Figure(
        "1",
        "Throughput through one forward",
        table,
        [Target("throughput vs ssh -R (median of paired runs)", fmt_x(x), "≥ 1.0×", x >= 1.0)],
        [
            f"Paired runs (tunnelkeeper ÷ the ssh -R run right after it): median {fmt_x(x)}, "
            f'range {fmt_x(min(pairs))}–{fmt_x(max(pairs))}; the table\'s "vs ssh -R" is the '
            "ratio of the medians.",
            f"{size >> 20} MiB of random bytes per run, {runs} runs each, interleaved; one TCP "
            "connection, sender → relay listen port → tunnel → sink, timed until the sink's OK.",
            f"tunnelkeeper negotiated {cipher.strip()}; ssh -R used OpenSSH's default order "
            "(chacha20-poly1305 first).",
            "CPU s/GB is the CPU time (user + system) each process spent per GB moved: on a "
            "machine with few cores the four processes on the path (sender, relay sshd, "
            "client, sink) compete, so MB/s follows the total.",
        ],
    )


if __name__ == "__main__":
    figure_main(run)
