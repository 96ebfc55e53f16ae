"""SMTP ETRN: ask the relay's own MTA, over the tunnel, to deliver now the mail it holds
for a forward's domains, instead of at its next queue run; and `Flusher`, which does so for one
smtp forward whenever it is whole again, at most once every MIN_INTERVAL per domain."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .. import ssh
from ..config import Config, Endpoint, Forward, Tunnel
from ..errors import ChannelDenied, TunnelkeeperError
from ..state import FlushResult, ForwardStatus, utcnow
from .probes import read_smtp_reply

log = logging.getLogger(__name__)

MIN_INTERVAL = 10.0  # seconds between two ETRNs for one domain
TIMEOUT = 20.0  # the whole conversation, channel included
Outcome = Literal["accepted", "refused", "unreachable"]
OpenStream = Callable[[Endpoint, float], Awaitable[ssh.Stream]]

# What the relay's admin changes when the relay's MTA turns ETRN away.
HINT = (
    "let the relay's MTA accept ETRN from 127.0.0.1 (sendmail: no `noetrn` in PrivacyOptions, "
    "no daemon flag E, no check_etrn ruleset refusing it; Postfix: the domains in "
    "fast_flush_domains and smtpd_etrn_restrictions permitting 127.0.0.1), or set "
    "etrn = false on this forward"
)


@dataclass(frozen=True)
class DomainFlush:
    """The relay MTA's answer to the ETRN for one domain (`reply` escaped)."""

    domain: str
    command: str  # what was sent: `ETRN example.org` or `ETRN @example.org`
    outcome: Outcome
    reply: str
    forward: str = ""  # the smtp forward whose domain it is (set by flush_all)

    @property
    def ok(self) -> bool:
        return self.outcome == "accepted"

    def to_json(self) -> dict[str, object]:
        return {
            "forward": self.forward,
            "domain": self.domain,
            "command": self.command,
            "ok": self.ok,
            "outcome": self.outcome,
            "reply": self.reply,
        }


def arguments(forward: Forward) -> list[tuple[str, str]]:
    """(domain, ETRN argument) per domain (see Forward.etrn_arguments)."""
    return forward.etrn_arguments


def _outcome(code: int) -> Outcome:
    # 250-253: accepted; 458/459, 5xx: this relay will not (or cannot) do it.
    return "accepted" if 250 <= code <= 253 else "refused"


async def _ask(stream: ssh.Stream, line: str, what: str) -> tuple[int, str]:
    stream.write(line.encode("ascii") + b"\r\n")
    await stream.drain()
    return await read_smtp_reply(stream, what)


async def converse(stream: ssh.Stream, domains: Sequence[tuple[str, str]]) -> list[DomainFlush]:
    """Greeting, EHLO, one ETRN per domain, QUIT. Raises ProbeError when the other end is
    not an SMTP server that takes EHLO (the message says what it answered)."""
    code, greeting = await read_smtp_reply(stream, "greeting")
    if code != 220:
        return [DomainFlush(d, f"ETRN {a}", "refused", greeting) for d, a in domains]
    code, hello = await _ask(stream, "EHLO tunnelkeeper.flush", "EHLO")
    if code != 250:
        return [DomainFlush(d, f"ETRN {a}", "refused", hello) for d, a in domains]
    answers: list[DomainFlush] = []
    for domain, arg in domains:
        code, reply = await _ask(stream, f"ETRN {arg}", f"ETRN {arg}")
        if code in (458, 459, 501) and arg.startswith("@"):
            # A relay that takes no "@" form (it names no domain it knows): the domain alone.
            arg = domain
            code, reply = await _ask(stream, f"ETRN {arg}", f"ETRN {arg}")
        answers.append(DomainFlush(domain, f"ETRN {arg}", _outcome(code), reply))
    stream.write(b"QUIT\r\n")
    await stream.drain()
    return answers


async def flush(
    open_stream: OpenStream,
    relay_mta: Endpoint,
    domains: Sequence[tuple[str, str]],
    timeout: float = TIMEOUT,
) -> list[DomainFlush]:
    """ETRN each of `domains` at `relay_mta` through a channel of `open_stream`. Never raises
    for what the relay or the network does: a channel that cannot be opened, a timeout or an
    answer that is not SMTP is the outcome "unreachable", with the reason."""
    try:
        async with asyncio.timeout(timeout):
            stream = await open_stream(relay_mta, timeout)
            try:
                return await converse(stream, domains)
            finally:
                stream.close()
    except TimeoutError:
        why = f"the relay's MTA at {relay_mta} did not answer within {timeout:g}s"
    except ChannelDenied:
        why = (
            f"the relay lets no channel reach relay_mta {relay_mta}: its permitopen "
            "(authorized_keys) or PermitOpen (sshd_config) must name it, as the kit's do"
        )
    except TunnelkeeperError as exc:
        why = f"{relay_mta}: {exc}"
    except (OSError, UnicodeError) as exc:
        why = f"{relay_mta}: {exc}"
    return [DomainFlush(d, f"ETRN {a}", "unreachable", why) for d, a in domains]


def summary(answers: Sequence[DomainFlush]) -> FlushResult:
    """The forward's `last_flush`: ok when every domain was accepted; the reply alone for one
    domain, else `domain: reply` per domain."""
    if len(answers) == 1:
        reply = answers[0].reply
    else:
        reply = "; ".join(f"{a.domain}: {a.reply}" for a in answers)
    return FlushResult(at=utcnow(), ok=all(a.ok for a in answers), reply=reply)


class Flusher:
    """One smtp forward's ETRNs: `whole(...)` when the forward is whole again (the tunnel's
    runtime knows when), at most once every MIN_INTERVAL per domain (a flush asked for sooner
    waits until then, rather than leave the mail to the relay's next queue run); results kept
    for the snapshot and counted by outcome; a refusal logged once per change of a domain's
    outcome, with what to change on the relay. `clock` and `sleep` are the tests' to replace."""

    def __init__(
        self,
        tunnel: str,
        forward: Forward,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.tunnel = tunnel
        self.forward = forward
        self.clock = clock
        self.sleep = sleep
        self.last: FlushResult | None = None
        self.counts: dict[Outcome, int] = {"accepted": 0, "refused": 0, "unreachable": 0}
        self._sent: dict[str, float] = {}  # domain -> clock() of its last ETRN
        self._said: dict[str, Outcome] = {}  # domain -> the outcome last logged
        self._whole = False
        self._waiting = False  # a flush is waiting out the rate limit: it serves later asks too

    def whole_again(self, whole: bool) -> bool:
        """Say whether the forward is whole now (up and, with probes on, its probe through);
        True when it has just become so."""
        was, self._whole = self._whole, whole
        return whole and not was

    def mark_sent(self, domains: Iterable[str]) -> None:
        now = self.clock()
        for domain in domains:
            self._sent[domain] = now

    def wait(self) -> float:
        """Seconds until every domain may have its next ETRN (0: now)."""
        now = self.clock()
        return max((self._sent[d] + MIN_INTERVAL - now for d in self._sent), default=0.0)

    async def whole(self, open_stream: OpenStream, relay_mta: Endpoint, why: str) -> None:
        """The forward is whole again (`why`: at start, reconnected, probe recovered): ETRN
        its domains, once the rate limit allows. Never raises for what the relay does."""
        if self._waiting:
            return
        self._waiting = True
        try:
            if (wait := self.wait()) > 0:
                log.debug(
                    "tunnel %s: forward %s whole again (%s); ETRN in %.1fs (one per %gs)",
                    self.tunnel,
                    self.forward.name,
                    why,
                    wait,
                    MIN_INTERVAL,
                )
                await self.sleep(wait)
        finally:
            self._waiting = False
        domains = arguments(self.forward)
        self.mark_sent(d for d, _ in domains)
        self.record(await flush(open_stream, relay_mta, domains), why)

    def record(self, answers: Sequence[DomainFlush], why: str) -> FlushResult:
        """Keep, count and log `answers` (also those of a `tunnelkeeper flush`)."""
        for answer in answers:
            self.counts[answer.outcome] += 1
            self._log(answer, why)
        self.last = summary(answers)
        return self.last

    def _log(self, answer: DomainFlush, why: str) -> None:
        who = f"tunnel {self.tunnel}: forward {self.forward.name}"
        changed = self._said.get(answer.domain) != answer.outcome
        self._said[answer.domain] = answer.outcome
        if answer.ok:
            log.info('%s: %s (%s): relay answered "%s"', who, answer.command, why, answer.reply)
        elif not changed:
            log.debug('%s: %s (%s): still "%s"', who, answer.command, why, answer.reply)
        elif answer.outcome == "refused":
            log.warning(
                '%s: the relay\'s MTA refused %s: "%s"; held mail waits for its next queue run: %s',
                who,
                answer.command,
                answer.reply,
                HINT,
            )
        else:
            log.warning(
                "%s: %s not delivered: %s; held mail waits for the relay's next queue run",
                who,
                answer.command,
                answer.reply,
            )


def flushers(tunnel: str, forwards: Iterable[Forward]) -> dict[str, Flusher]:
    """A Flusher for every smtp forward with domains (`tunnelkeeper flush` asks for them all;
    only those with `etrn` on flush by themselves)."""
    return {f.name: Flusher(tunnel, f) for f in forwards if f.service == "smtp" and f.domains}


def amend(status: ForwardStatus, flushers: Mapping[str, Flusher]) -> ForwardStatus:
    """`status` with its forward's last flush and ETRN counts, when it has a flusher."""
    flusher = flushers.get(status.name)
    if flusher is None or status.direction != "forward":
        return status
    counts = flusher.counts
    return replace(
        status,
        last_flush=flusher.last,
        etrn_accepted=counts["accepted"],
        etrn_refused=counts["refused"],
        etrn_unreachable=counts["unreachable"],
    )


async def flush_all(
    flushers: Mapping[str, Flusher],
    open_stream: OpenStream | None,
    relay_mta: Endpoint,
    down: str,
    forward: str | None = None,
    *,
    record: bool = True,
) -> list[DomainFlush]:
    """ETRN every domain of every flusher's forward (or only `forward`'s) now, whatever the
    rate limit, and (`record`) keep and log the answers in the flushers; with no
    `open_stream` (no connection), each domain is "unreachable" for the reason `down`."""
    answers: list[DomainFlush] = []
    for name, flusher in flushers.items():
        if forward is not None and name != forward:
            continue
        domains = arguments(flusher.forward)
        if open_stream is None:
            got = [DomainFlush(d, f"ETRN {a}", "unreachable", down) for d, a in domains]
        else:
            got = await flush(open_stream, relay_mta, domains)
            flusher.mark_sent(d for d, _ in domains)
            if record:
                flusher.record(got, "tunnelkeeper flush")
        answers += [replace(answer, forward=name) for answer in got]
    return answers


async def flush_own(config: Config, tunnel: str | None = None) -> list[dict[str, object]]:
    """`tunnelkeeper flush` with no supervisor running: a connection of our own to each
    tunnel's relay (or `tunnel`'s), ETRN for every smtp forward's domains, one JSON object per
    domain. A relay that cannot be reached makes each of its domains "unreachable"."""
    tunnels = [config.tunnel_named(tunnel)] if tunnel is not None else list(config.tunnel)
    done = await asyncio.gather(*(_flush_tunnel(t) for t in tunnels))
    return [
        {"tunnel": t.name, **a.to_json()} for t, got in zip(tunnels, done, strict=True) for a in got
    ]


async def _flush_tunnel(cfg: Tunnel) -> list[DomainFlush]:
    found = flushers(cfg.name, cfg.forward)
    if not found:
        return []
    try:
        conn = await ssh.connect(cfg)
    except TunnelkeeperError as exc:
        down = f"relay connection failed: {exc}"
        return await flush_all(found, None, cfg.relay_mta, down, record=False)
    async with conn:
        return await flush_all(found, conn.open_stream, cfg.relay_mta, "", record=False)
