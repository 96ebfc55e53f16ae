"""Figure 3: concurrency — 1,000 connections open at once through one tunnel, all answered."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from .harness import Env, Figure, Target, figure_main, median, ports, raise_nofile, time_limit

# sshd listens for a remote forward with a backlog of 128. A burst of SYNs beyond it makes the
# kernel answer with SYN cookies, and a cookie connection whose final ACK meets a full accept
# queue is a ghost: open on the client, unknown to sshd. Keeping fewer than 128 connections in
# their handshake measures the tunnel, not that kernel effect (the same for every client).
PACE = 100


@dataclass
class Burst:
    served: int
    greeted_s: float  # until the last greeting arrived
    total_s: float  # until the last PONG arrived


async def burst(port: int, n: int, timeout: float, pace: int = PACE) -> Burst:
    """Open `n` connections (at most `pace` of them connecting at a time); once every one was
    greeted (or failed), PING on each; all stay open until every PONG is in."""
    opening = asyncio.Semaphore(pace)
    t0 = time.perf_counter()
    greeted_at = answered_at = 0.0
    answers = 0
    settled, all_settled = [0], asyncio.Event()  # greeting phase over, per connection
    finished, all_finished = [0], asyncio.Event()  # no more I/O to do, per connection
    done = asyncio.Event()  # the measurement is over: close

    def count(counter: list[int], event: asyncio.Event) -> None:
        counter[0] += 1
        if counter[0] == n:
            event.set()

    async def one() -> None:
        nonlocal greeted_at, answers, answered_at
        writer = None
        try:
            async with opening, asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
                ok = (await reader.readline()).startswith(b"220")
            greeted_at = time.perf_counter()
        except (OSError, TimeoutError):
            ok = False
        count(settled, all_settled)
        try:
            if ok and writer is not None:
                await all_settled.wait()
                async with asyncio.timeout(timeout):
                    writer.write(b"PING\r\n")
                    if (await reader.readline()).startswith(b"PONG"):
                        answers += 1
                        answered_at = time.perf_counter()
        except (OSError, TimeoutError):
            pass
        count(finished, all_finished)
        await done.wait()
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3 * timeout):
            await all_finished.wait()
    # Every connection that was served is still open here: all n at once.
    done.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return Burst(answers, greeted_at - t0, answered_at - t0)


def run(quick: bool = False) -> Figure:
    n, runs = (50, 1) if quick else (1000, 3)
    raise_nofile(n * 4 + 1024)
    with time_limit(60 if quick else 240), Env("concurrency") as env:
        tk_port, ssh_port = ports(2)
        # max_connections (default 100) is the flood guard; this figure measures capacity.
        clients = [env.tunnelkeeper([tk_port], max_connections=n), env.ssh([ssh_port])]
        for client in clients:
            client.start()
        for client in clients:
            client.wait_ready()
        results: dict[str, list[Burst]] = {c.label: [] for c in clients}
        for _ in range(runs):  # interleaved A B A B
            for client in clients:
                results[client.label].append(asyncio.run(burst(client.listens[0], n, 30.0)))
                time.sleep(0.5)  # let the relay close the last burst's channels
    table = [["client", "served (worst run)", "all greeted (median)", "all answered (median)"]]
    for label, bursts in results.items():
        table.append(
            [
                label,
                f"{min(b.served for b in bursts)}/{n}",
                f"{median([b.greeted_s for b in bursts]):.2f} s",
                f"{median([b.total_s for b in bursts]):.2f} s",
            ]
        )
    worst = min(b.served for b in results["tunnelkeeper"])
    return Figure(
        "3",
        f"Concurrency: {n:,} connections open at once through one tunnel",
        table,
        [Target(f"{n:,} concurrent connections served", f"{worst}/{n}", f"{n}/{n}", worst == n)],
        [
            f"{runs} bursts per client, interleaved. Each connection reads the 220 greeting; once "
            "all are greeted each sends PING and reads PONG; all stay open until the last PONG.",
            f"At most {PACE} connections are in their handshake at a time: sshd's listener has an "
            "accept backlog of 128, and a SYN burst beyond it gets SYN-cookie connections that "
            "sshd never accepts (a kernel effect, the same for every client).",
        ],
    )


if __name__ == "__main__":
    figure_main(run)
