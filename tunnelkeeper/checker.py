"""`check`: one connection per tunnel; verify, authenticate, try each forward and its probe."""

from __future__ import annotations

import asyncio
import os

from . import probes, ssh
from .config import Config, Forward, Tunnel
from .errors import ChannelDenied, ForwardRefused, TunnelkeeperError
from .inbound import ForwardRuntime
from .state import ForwardStatus, SupervisorStatus, TunnelStatus, utcnow


async def check(config: Config, running: SupervisorStatus | None = None) -> SupervisorStatus:
    """Check every tunnel at once. With a supervisor `running`, the forwards are its to hold:
    the connection is still tested, and its forwards' state is taken from its status."""
    started = utcnow()
    held = {t.name: t for t in running.tunnels} if running else {}
    tunnels = await asyncio.gather(*(_check_tunnel(t, held.get(t.name)) for t in config.tunnel))
    return SupervisorStatus(
        pid=os.getpid(), started=started, config=str(config.path), tunnels=tuple(tunnels)
    )


async def _check_tunnel(cfg: Tunnel, held: TunnelStatus | None) -> TunnelStatus:
    base = TunnelStatus(name=cfg.name, relay=cfg.relay, state="connecting")
    try:
        conn = await ssh.connect(cfg)
    except TunnelkeeperError as exc:
        forwards = tuple(_down(fwd, "relay connection failed") for fwd in cfg.forward)
        return TunnelStatus(
            name=cfg.name,
            relay=cfg.relay,
            state="stopped",
            error_kind=exc.error_kind,
            last_error=str(exc),
            forwards=forwards,
        )
    async with conn:
        if held is not None:
            forwards = held.forwards
        else:
            forwards = tuple([await _check_forward(conn, cfg, fwd) for fwd in cfg.forward])
    refused = [f for f in forwards if f.state == "refused"]
    return TunnelStatus(
        name=base.name,
        relay=base.relay,
        state="up",
        since=utcnow(),
        connects=1,
        cipher=conn.cipher,
        forwards=forwards,
        error_kind="forward-refused" if refused else None,
        last_error="; ".join(f"{f.name}: {f.error}" for f in refused) or None,
    )


def _down(fwd: Forward, why: str) -> ForwardStatus:
    return ForwardStatus(
        name=fwd.name,
        service=fwd.service,
        listen=str(fwd.listen),
        target=str(fwd.target),
        state="down",
        error=why,
    )


async def _check_forward(conn: ssh.RelayConnection, cfg: Tunnel, fwd_cfg: Forward) -> ForwardStatus:
    fwd = ForwardRuntime(fwd_cfg)
    try:
        listener = await conn.listen(fwd_cfg.listen, fwd.accept)
    except ForwardRefused as exc:
        fwd.set_state("refused", str(exc))
        return fwd.snapshot()
    try:
        fwd.set_state("up")
        try:
            fwd.probe = await probes.run_probe(fwd_cfg, conn.open_stream, cfg.probe_timeout)
        except ChannelDenied:
            fwd.probe = await probes.run_probe(
                fwd_cfg, conn.open_stream, cfg.probe_timeout, via_local=True
            )
    finally:
        listener.close()
        await listener.wait_closed()
    return fwd.snapshot()
