"""Figure 5: frozen relay — SIGSTOP the session: time to notice, and time back once freed."""

from __future__ import annotations

import signal
import time

from .harness import (
    Client,
    Env,
    Figure,
    figure_main,
    fmt_x,
    median,
    ports,
    ratio,
    signal_pids,
    time_limit,
    wait_answer,
)

INTERVAL, COUNT = 2, 2  # keepalive_interval/count_max = ServerAliveInterval/CountMax
# The stale listener is freed this long after the client noticed, a different time each run:
# both clients retry on a schedule, and the time back depends on where in it the port is freed.
HOLDS = (3.0, 4.0, 5.0)
FAST_RETRY = 0.25  # a retried listen is one global request on the live connection


def logins(env: Env) -> int:
    return env.sshd.log_text().count("Accepted publickey")


def freeze_and_time(
    env: Env, client: Client, hold: float, timeout: float = 40.0
) -> tuple[float, float, int]:
    """Freeze the relay session holding the client's forward; return (seconds until the client
    opened a new connection, seconds from freeing the stale listener until the forward
    answers again, logins the relay served meanwhile)."""
    listen = client.listens[0]
    logins_before = logins(env)
    before = env.sshd.connections()
    stale = env.sshd.session_of(listen)
    if not stale:
        raise RuntimeError(f"no relay session holds {listen}")
    signal_pids(stale, signal.SIGSTOP)
    t_stop = time.monotonic()
    deadline = t_stop + timeout
    while not env.sshd.connections() - before - set(stale):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{client.label} never noticed the frozen relay")
        time.sleep(0.005)
    noticed = time.monotonic() - t_stop
    time.sleep(hold)
    signal_pids(stale, signal.SIGKILL)  # what the relay's ClientAlive would do, at last
    t_free = time.monotonic()
    back = wait_answer(listen, timeout)
    if back is None:
        raise RuntimeError(f"{client.label} did not come back within {timeout}s")
    return noticed, back - t_free, logins(env) - logins_before


def run(quick: bool = False) -> Figure:
    runs = 1 if quick else 3
    with time_limit(90 if quick else 240), Env("frozen") as env:
        a, b, c = ports(3)
        clients: list[Client] = [
            env.autossh([a], alive_interval=INTERVAL, alive_count=COUNT),
            env.tunnelkeeper(
                [b], keepalive_interval=INTERVAL, keepalive_count_max=COUNT, stable_after=1
            ),
            env.tunnelkeeper(
                [c],
                keepalive_interval=INTERVAL,
                keepalive_count_max=COUNT,
                stable_after=1,
                forward_retry=FAST_RETRY,
            ),
        ]
        clients[2].label = f"tunnelkeeper forward_retry={FAST_RETRY:g}"
        noticed: dict[str, list[float]] = {c.label: [] for c in clients}
        back: dict[str, list[float]] = {c.label: [] for c in clients}
        relogins: dict[str, list[int]] = {c.label: [] for c in clients}
        for run_index in range(runs):  # interleaved A B A B, each run with fresh clients
            for client in clients:
                client.start()
                client.wait_ready()
                time.sleep(1.5)  # past stable_after
                hold = HOLDS[run_index % len(HOLDS)]
                n, t, count = freeze_and_time(env, client, hold)
                noticed[client.label].append(n)
                back[client.label].append(t)
                relogins[client.label].append(count)
                client.stop()
    base_n, base_b = median(noticed["autossh"]), median(back["autossh"])
    table = [
        [
            "client",
            "notice (median)",
            "back after freeing (median)",
            "relay logins per outage",
            "runs: notice / back",
        ]
    ]
    for client in clients:
        label = client.label
        n, t = median(noticed[label]), median(back[label])
        table.append(
            [
                label,
                f"{n:.2f} s ({fmt_x(ratio(n, base_n))})",
                f"{t:.2f} s ({fmt_x(ratio(t, base_b))})",
                f"{median(relogins[label]):.0f}",
                " ".join(
                    f"{x:.1f}/{y:.2f}" for x, y in zip(noticed[label], back[label], strict=True)
                ),
            ]
        )
    return Figure(
        "5",
        "Frozen relay session",
        table,
        [],
        [
            f"{runs} runs per client, interleaved, fresh clients each run. The relay session "
            "holding the forward gets SIGSTOP: its TCP connection stays open and its listener "
            "stays bound, but nothing answers.",
            "notice: SIGSTOP until the client opens a new connection to the relay. Both clients "
            f"probe every {INTERVAL} s and give up after {COUNT} missed answers "
            f"(tunnelkeeper keepalive_interval/keepalive_count_max = autossh "
            "ServerAliveInterval/ServerAliveCountMax).",
            f"back: {' / '.join(f'{h:g}' for h in HOLDS[:runs])} s (by run) after the client "
            "noticed, the frozen session is killed (as the "
            "relay's ClientAlive would end it), freeing its listener; the clock runs until the "
            "forward answers again. Meanwhile tunnelkeeper keeps its new connection and retries "
            "the listen 50 ms after the first refusal, doubling up to forward_retry (2 s by "
            f"default, {FAST_RETRY:g} s in the last row), one global request on the live "
            "connection each time; ssh exits on the refused forward (ExitOnForwardFailure) "
            "and autossh starts a new ssh, a full key exchange and login on the relay each "
            "time (the logins column).",
        ],
    )


if __name__ == "__main__":
    figure_main(run)
