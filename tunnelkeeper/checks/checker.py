"""`check`: one connection per tunnel; verify, authenticate, try each forward and its probe."""

from __future__ import annotations

import asyncio
import os

from .. import control, ssh
from ..config import Config, Forward, Local, Tunnel
from ..errors import ForwardRefused, TunnelError, TunnelkeeperError
from ..forwarding.dial import source_unusable
from ..forwarding.inbound import ForwardRuntime
from ..forwarding.mailwatch import Handover
from ..forwarding.outbound import LocalRuntime
from ..peertext import peer_text
from ..state import ForwardStatus, SupervisorStatus, TunnelStatus, refused_summary, utcnow
from . import boundary, mailtest, probes
from .boundary import Boundary
from .mailtest import MailTest


async def check(config: Config, running: SupervisorStatus | None = None) -> SupervisorStatus:
    """Check every tunnel at once. With a supervisor `running`, the forwards are its to hold:
    the connection is still tested, and its forwards' state is taken from its status."""
    status, _ = await check_and_prove(config, running)
    return status


async def check_and_prove(
    config: Config, running: SupervisorStatus | None = None
) -> tuple[SupervisorStatus, list[Boundary]]:
    """`check`, and the boundary of every smtp and dns forward proved through the relay
    (through the running supervisor's forwards when it holds them)."""
    started = utcnow()
    held = {t.name: t for t in running.tunnels} if running else {}
    results = await asyncio.gather(*(_check_tunnel(t, held.get(t.name)) for t in config.tunnel))
    status = SupervisorStatus(
        pid=os.getpid(),
        started=started,
        config=str(config.path),
        tunnels=tuple(tunnel for tunnel, _ in results),
    )
    return status, [proof for _, proofs in results for proof in proofs]


async def _check_tunnel(
    cfg: Tunnel, held: TunnelStatus | None
) -> tuple[TunnelStatus, list[Boundary]]:
    try:
        conn = await ssh.connect(cfg)
    except TunnelkeeperError as exc:
        forwards = tuple(_down(fwd, "relay connection failed") for fwd in cfg.forward)
        untried = [
            boundary.not_tried(cfg, fwd, "relay connection failed")
            for fwd in cfg.forward
            if boundary.applies(fwd)
        ]
        failed = TunnelStatus(
            name=cfg.name,
            relay=cfg.relay,
            state="stopped",
            error_kind=exc.error_kind,
            last_error=str(exc),
            relay_version=exc.relay_version if isinstance(exc, TunnelError) else None,
            forwards=forwards,
        )
        return failed, untried
    proofs: list[Boundary] = []
    async with conn:
        if held is not None:
            forwards = held.forwards
            states = {f.name: f for f in forwards if f.direction == "forward"}
            for fwd in filter(boundary.applies, cfg.forward):
                proofs.append(await _prove(conn, cfg, fwd, states.get(fwd.name)))
        else:
            forwards = tuple([await _check_forward(conn, cfg, fwd, proofs) for fwd in cfg.forward])
            forwards += tuple([await _check_local(conn, cfg, lc) for lc in cfg.local])
    proved = {p.forward for p in proofs}
    proofs += [  # a forward left before its proof (not opened, say) is still reported
        boundary.not_tried(cfg, fwd, "the forward is not up")
        for fwd in cfg.forward
        if boundary.applies(fwd) and fwd.name not in proved
    ]
    refused = [f for f in forwards if f.state == "refused"]
    tunnel = TunnelStatus(
        name=cfg.name,
        relay=cfg.relay,
        state="up",
        since=utcnow(),
        connects=1,
        cipher=conn.cipher,
        relay_version=conn.relay_version,
        forwards=forwards,
        error_kind="forward-refused" if refused else None,
        last_error=refused_summary(forwards),
    )
    return tunnel, proofs


async def _prove(
    conn: ssh.RelayConnection, cfg: Tunnel, fwd: Forward, status: ForwardStatus | None
) -> Boundary:
    """The boundary of one forward, through the relay: only over a path the probe found."""
    if status is None or status.state != "up":
        return boundary.not_tried(cfg, fwd, "the forward is not up")
    if status.probe is not None and status.probe.via == "local":
        return boundary.not_tried(cfg, fwd, "the relay forbids the channel the check needs")
    if status.probe is not None and not status.probe.ok:
        return boundary.not_tried(cfg, fwd, "its probe failed")
    return await boundary.prove(cfg, fwd, conn.open_stream)


async def _check_local(conn: ssh.RelayConnection, cfg: Tunnel, local: Local) -> ForwardStatus:
    """A local forward's listen port is ours to open only when no supervisor holds it: only
    its target is tried, as the relay reaches it."""
    runtime = LocalRuntime(local)
    runtime.set_state("up")
    runtime.probe, denied = await probes.probe_with_fallback(
        local, conn.open_stream, cfg.probe_timeout
    )
    if denied is not None:
        runtime.set_state("refused", str(denied))
    return runtime.snapshot()


def _down(fwd: Forward, why: str) -> ForwardStatus:
    return ForwardStatus(
        name=fwd.name,
        service=fwd.service,
        listen=str(fwd.listen),
        target=str(fwd.target),
        state="down",
        error=why,
    )


async def _check_forward(
    conn: ssh.RelayConnection, cfg: Tunnel, fwd_cfg: Forward, proofs: list[Boundary]
) -> ForwardStatus:
    """Open the forward, probe it and, while it is open, prove its boundary into `proofs`."""
    fwd = ForwardRuntime(fwd_cfg)
    fwd.relay_address = conn.relay_address
    source = fwd_cfg.source_address
    unusable = None if source is None else source_unusable(source)
    if unusable is not None:  # every connection to the target would fail: say why up front
        fwd.set_state("down", f"{unusable}: set `source` to one of this host's addresses")
        return fwd.snapshot()
    try:
        listener = await conn.listen(fwd_cfg.listen, fwd.accept)
    except ForwardRefused as exc:
        fwd.set_state("refused", str(exc))
        if boundary.applies(fwd_cfg):
            proofs.append(boundary.not_tried(cfg, fwd_cfg, "the relay refused the forward"))
        return fwd.snapshot()
    try:
        fwd.set_state("up")
        fwd.probe, _ = await probes.probe_with_fallback(
            fwd_cfg, conn.open_stream, cfg.probe_timeout
        )
        if boundary.applies(fwd_cfg):
            proofs.append(await _prove(conn, cfg, fwd_cfg, fwd.snapshot()))
    finally:
        listener.close()
        await listener.wait_closed()
    return fwd.snapshot()


async def check_mail(
    config: Config, running: SupervisorStatus | None, timeout: float
) -> list[MailTest]:
    """check --mail: for every smtp forward's domains, submit a test message to the relay's
    own MTA over the tunnel and watch the forward for it (the running supervisor's forward,
    when it holds one; else a listener of our own for the time of the test)."""
    held = {t.name for t in running.tunnels} if running else set()
    results = await asyncio.gather(
        *(_mail_tunnel(config, t, t.name in held, timeout) for t in config.tunnel)
    )
    return [test for tests in results for test in tests]


async def _mail_tunnel(config: Config, cfg: Tunnel, held: bool, timeout: float) -> list[MailTest]:
    smtp = [f for f in cfg.forward if f.service == "smtp" and f.domains]
    if not smtp:
        return []
    try:
        conn = await ssh.connect(cfg)
    except TunnelkeeperError as exc:
        return [
            MailTest(cfg.name, f.name, d, "", False, "error", f"relay connection failed: {exc}")
            for f in smtp
            for d in f.domains
        ]
    tests: list[MailTest] = []
    async with conn:
        for fwd in smtp:
            runtime = None if held else ForwardRuntime(fwd)
            listener = None
            if runtime is not None:
                runtime.relay_address = conn.relay_address
                try:
                    listener = await conn.listen(fwd.listen, runtime.accept)
                except ForwardRefused as exc:
                    tests += [
                        MailTest(cfg.name, fwd.name, d, "", False, "error", str(exc))
                        for d in fwd.domains
                    ]
                    continue
            try:
                for domain in fwd.domains:
                    tests.append(await _mail_one(config, conn, cfg, fwd, domain, runtime, timeout))
            finally:
                if listener is not None:
                    listener.close()
                    await listener.wait_closed()
    return tests


async def _mail_one(
    config: Config,
    conn: ssh.RelayConnection,
    cfg: Tunnel,
    fwd: Forward,
    domain: str,
    runtime: ForwardRuntime | None,
    timeout: float,
) -> MailTest:
    token = mailtest.new_token()
    loop = asyncio.get_running_loop()

    def result(ok: bool, outcome: str, detail: str, seconds: float | None = None) -> MailTest:
        return MailTest(cfg.name, fwd.name, domain, token, ok, outcome, detail, seconds)

    remote = None
    local = None
    try:
        if runtime is None:
            remote = control.MailWatchClient(
                config.control_socket, cfg.name, fwd.name, token, timeout
            )
            await remote.start()
        else:
            local = runtime.traffic.watch(token.encode("ascii"))
        started = loop.time()
        stream = await conn.open_stream(cfg.relay_mta, cfg.probe_timeout)
        try:
            async with asyncio.timeout(timeout):
                accepted = await mailtest.submit(stream, domain, token, cfg.host)
        except mailtest.MailRefused as refused:
            return result(False, "refused", mailtest.diagnosis(refused))
        finally:
            stream.close()
        try:
            async with asyncio.timeout(max(0.0, timeout - (loop.time() - started))):
                seen, reply = await _handed(remote, local)
        except TimeoutError:
            seen, reply = False, None
        if not seen:
            return result(False, "not-delivered", mailtest.not_delivered(timeout))
        seconds = loop.time() - started
        if reply is None:
            return result(False, "not-delivered", mailtest.cut_short(accepted))
        if not reply.startswith("2"):
            return result(False, "internal-refused", mailtest.refused_inside(accepted, reply))
        return result(
            True,
            "delivered",
            f"the relay accepted it ({accepted}) and delivered it through the tunnel "
            f"in {seconds:.2f}s; the internal mail server took it ({reply})",
            seconds,
        )
    except TimeoutError:
        return result(False, "error", f"the relay's MTA did not answer within {timeout:g}s")
    except TunnelkeeperError as exc:
        return result(False, "error", str(exc))
    finally:
        if remote is not None:
            remote.close()
        if local is not None:
            local.cancel()


async def _handed(
    remote: control.MailWatchClient | None, local: asyncio.Future[Handover] | None
) -> tuple[bool, str | None]:
    """Wait until the session that carried the token (through the supervisor's forward, or
    ours) handed the message over: whether it did, and the internal server's answer to the
    end of the message (None: the session ended without one)."""
    if remote is not None:
        seen, reply = await remote.seen()
        return seen, None if reply is None else peer_text(reply)
    assert local is not None
    return True, (await local).reply
