"""The sshd keepalive choice: the relay frees a dead client's listeners before it reconnects."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tunnelkeeper.config import Forward, Tunnel, parse_endpoint
from tunnelkeeper.relaykit.openssh import client_alive


def tunnel(interval: float, count: int) -> Tunnel:
    forward = Forward(
        name="smtp", service="tcp", listen=parse_endpoint(2525), target=parse_endpoint(25)
    )
    return Tunnel(
        name="t",
        host="relay.example.net",
        user="u",
        identity=Path("k"),
        keepalive_interval=interval,
        keepalive_count_max=count,
        forward=(forward,),
    )


@given(
    interval=st.floats(min_value=0.1, max_value=600, allow_nan=False),
    count=st.integers(min_value=1, max_value=1000),
)
def test_relay_gives_up_no_later_than_the_client(interval: float, count: int) -> None:
    alive = client_alive(tunnel(interval, count))
    assert alive.interval >= 1 and alive.count_max >= 1  # 0 would turn sshd's check off
    assert alive.relay_worst == alive.interval * (alive.count_max + 1)
    if alive.client_budget >= 2:  # below that, whole seconds cannot win; the comment says so
        assert alive.relay_worst <= alive.client_budget


def test_defaults() -> None:
    alive = client_alive(tunnel(5, 3))
    assert (alive.interval, alive.count_max, alive.relay_worst) == (3, 3, 12)
