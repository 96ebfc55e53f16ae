"""Figure 4: recovery — the relay session is killed; time until the forward answers again."""

from __future__ import annotations

import signal
import time

from .harness import (
    Autossh,
    Client,
    Env,
    Figure,
    Target,
    figure_main,
    fmt_x,
    median,
    memory_kb,
    ports,
    ratio,
    signal_pids,
    time_limit,
    wait_answer,
)

STABLE_AFTER = 1.0  # tunnelkeeper reconnects at once after a connection up this long


def settle(env: Env, clients: list[Client], sessions: int, timeout: float = 30.0) -> None:
    """Wait until every forward answers, the relay holds `sessions` sessions (standby ready),
    and every connection is older than STABLE_AFTER."""
    deadline = time.monotonic() + timeout
    for client in clients:
        client.wait_ready(timeout)
    while len(env.sshd.connections()) < sessions:
        if time.monotonic() > deadline:
            raise RuntimeError(f"relay never reached {sessions} sessions")
        time.sleep(0.02)
    time.sleep(STABLE_AFTER + 0.5)


def kill_and_time(env: Env, listen: int, timeout: float = 30.0) -> float:
    """SIGKILL the relay session holding `listen`; seconds until the forward greets again."""
    session = env.sshd.session_of(listen)
    if not session:
        raise RuntimeError(f"no relay session holds {listen}")
    signal_pids(session, signal.SIGKILL)
    t0 = time.monotonic()
    back = wait_answer(listen, timeout)
    if back is None:
        raise RuntimeError(f"forward {listen} did not come back within {timeout}s")
    return back - t0


def run(quick: bool = False) -> Figure:
    runs = 1 if quick else 7
    with time_limit(60 if quick else 240), Env("recovery") as env:
        a, b, c = ports(3)
        clients: list[Client] = [
            env.autossh([a]),
            env.tunnelkeeper([b], stable_after=STABLE_AFTER),
            env.tunnelkeeper([c], stable_after=STABLE_AFTER, standby=True),
        ]
        for client in clients:
            client.start()
        settle(env, clients, sessions=4)
        relay_rss = sum(memory_kb(pid)[0] for pid in env.sshd.session_of(b)) / 1024
        times: dict[str, list[float]] = {client.label: [] for client in clients}
        for _ in range(runs):  # interleaved A B C A B C
            for client in clients:
                if isinstance(client, Autossh):
                    # A fresh autossh for every kill, as when kills are a minute or more apart:
                    # after 5 restarts within 60 s autossh waits 2 s, then 8 s, 18 s, ...
                    client.stop()
                    client.start()
                    settle(env, clients, sessions=4)
                times[client.label].append(kill_and_time(env, client.listens[0]))
                settle(env, clients, sessions=4)
        standby_moves = clients[2].log().count("moving forwards onto the standby connection")
    base = median(times["autossh"])
    table = [["client", "recovery (median)", "runs (ms)", "vs autossh"]]
    for label, values in times.items():
        table.append(
            [
                label,
                f"{median(values) * 1e3:.1f} ms",
                " ".join(f"{v * 1e3:.0f}" for v in values),
                fmt_x(ratio(median(values), base)),
            ]
        )
    plain = ratio(median(times["tunnelkeeper"]), base)
    standby = ratio(median(times["tunnelkeeper standby"]), base)
    return Figure(
        "4",
        "Recovery after the relay session is killed",
        table,
        [
            Target("recovery vs autossh", fmt_x(plain), "≤ 0.5×", plain <= 0.5),
            Target("recovery with standby vs autossh", fmt_x(standby), "≤ 0.1×", standby <= 0.1),
        ],
        [
            f"{runs} kills per client, interleaved. The relay session holding the forward's "
            "listener (sshd's monitor and its child) gets SIGKILL; the clock stops when a "
            "connection to the relay port reads the sink's 220 (polled every 2 ms).",
            "autossh: `-M 0`, ServerAliveInterval 5, CountMax 3, ExitOnForwardFailure, "
            "AUTOSSH_GATETIME=0, started afresh before each kill: kills a few seconds apart "
            "would otherwise meet its back-off (after 5 restarts within 60 s it waits 2 s, "
            "then 8 s, 18 s, ...). tunnelkeeper: stable_after = 1 (a connection that was up "
            "reconnects at once, as autossh does), defaults otherwise.",
            f"Standby costs a second authenticated session on the relay per tunnel: here one "
            f"sshd session (monitor + child) takes {relay_rss:.1f} MB RSS on the relay. The "
            f"standby client moved its forwards onto the standby {standby_moves} time(s).",
        ],
    )


if __name__ == "__main__":
    figure_main(run)
