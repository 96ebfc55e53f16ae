"""`check --mail`: the old recipe's test, automated. A message to postmaster@DOMAIN is handed
to the relay's own MTA over the tunnel, and the forward is watched for it to come back: proof
that mail for DOMAIN reaches the internal server through the tunnel, not over port 25."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING

from ..errors import ProbeError
from ..ssh import Stream
from .probes import read_smtp_reply

if TYPE_CHECKING:
    from ..forwarding.traffic import ForwardTraffic

HEADER = "X-Tunnelkeeper-Test"


@dataclass(frozen=True)
class MailTest:
    """One domain's test: what happened, in words, and how long the round trip took."""

    tunnel: str
    forward: str
    domain: str
    token: str
    ok: bool
    outcome: str  # delivered | refused | not-delivered | internal-refused | error
    detail: str
    seconds: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "tunnel": self.tunnel,
            "forward": self.forward,
            "domain": self.domain,
            "token": self.token,
            "ok": self.ok,
            "outcome": self.outcome,
            "detail": self.detail,
            "seconds": None if self.seconds is None else round(self.seconds, 2),
        }


class MailRefused(ProbeError):
    """The relay's MTA said no to the test message; the message says at which step."""


def new_token() -> str:
    return secrets.token_hex(8)


def message(domain: str, token: str, sender: str) -> bytes:
    lines = [
        f"From: tunnelkeeper delivery test <{sender}>",
        f"To: postmaster@{domain}",
        f"Subject: tunnelkeeper delivery test {token}",
        f"Date: {formatdate(time.time())}",
        f"Message-ID: <{token}@tunnelkeeper.test>",
        f"{HEADER}: {token}",
        "",
        "This is a delivery test sent by `tunnelkeeper check --mail`: the relay's MTA",
        f"was asked to deliver it to postmaster@{domain}, and tunnelkeeper watched its",
        "tunnel for it. Nothing needs doing; it may be deleted.",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


async def _say(stream: Stream, line: str, step: str, want: int) -> str:
    stream.write(line.encode("ascii") + b"\r\n")
    await stream.drain()
    code, text = await read_smtp_reply(stream, step)
    if code // 100 != want // 100:
        raise MailRefused(f'{step} answered "{text}"')
    return text


async def submit(stream: Stream, domain: str, token: str, relay_host: str) -> str:
    """Hand the test message to the relay's MTA; return its answer to the data. Raises
    MailRefused when it turns the message away (which step, and what it said)."""
    sender = f"tunnelkeeper-test+{token}@{relay_host}"
    code, greeting = await read_smtp_reply(stream, "greeting")
    if code != 220:
        raise MailRefused(f'the greeting was "{greeting}"')
    await _say(stream, "EHLO tunnelkeeper.check", "EHLO", 250)
    await _say(stream, f"MAIL FROM:<{sender}>", "MAIL FROM", 250)
    await _say(stream, f"RCPT TO:<postmaster@{domain}>", f"RCPT TO postmaster@{domain}", 250)
    await _say(stream, "DATA", "DATA", 354)
    body = message(domain, token, sender).replace(b"\r\n.", b"\r\n..")
    accepted = await _say(stream, body.decode("ascii") + ".", "the end of the message", 250)
    stream.write(b"QUIT\r\n")
    await stream.drain()
    return accepted


def diagnosis(refused: MailRefused) -> str:
    text = str(refused)
    if "RCPT TO" in text:
        return (
            f"relaying refused: {text}; the relay's MTA must accept and relay mail for this "
            "domain (sendmail: relay-domains or RELAY_DOMAIN, and no access rule against it; "
            "Postfix: relay_domains)"
        )
    return f"the relay's MTA refused the test message: {text}"


def not_delivered(timeout: float) -> str:
    return (
        f"accepted by the relay's MTA but not delivered through the tunnel within {timeout:g}s: "
        "is the mailertable entry there and its map rebuilt (makemap hash mailertable < "
        "mailertable), the tunnel mailer defined (sendmail-mailer), and sendmail not in "
        "queue-only mode? If the relay delivered it elsewhere (its own MX lookup, a local "
        "mailbox), its mail log shows where"
    )


# (seconds, the internal server's answer or None), or None: what a watch found.
Handed = tuple[float, str | None] | None


def cut_short(accepted: str) -> str:
    return (
        f"the relay accepted it ({accepted}) and began to hand it through the tunnel, but "
        "the session ended before the internal mail server answered the end of the message: "
        "it does not have it (the relay keeps it queued for a later try)"
    )


def refused_inside(accepted: str, reply: str) -> str:
    later = "; a temporary refusal: the relay will try again" if reply.startswith("4") else ""
    return (
        f"the relay accepted it ({accepted}) and handed it through the tunnel, but the "
        f'internal mail server refused it: "{reply}"{later}'
    )


TrafficOf = Callable[[str, str], "ForwardTraffic | None"]


def watcher(traffic_of: TrafficOf) -> Callable[[str, str, str, float], Awaitable[Handed]]:
    """What a running supervisor's control socket answers check --mail with: watch the named
    forward's traffic for a token. `traffic_of(tunnel, forward)` finds it (None: not here)."""

    async def watch(tunnel: str, forward: str, token: str, timeout: float) -> Handed:
        """Seconds until the session that carried `token` through the forward handed its
        message over, and the target's answer to it (None: the session ended first); None
        when that did not happen within `timeout`. Raises LookupError for a tunnel or forward
        the supervisor has not."""
        traffic = traffic_of(tunnel, forward)
        if traffic is None:
            raise LookupError(f"no forward {tunnel}/{forward} here")
        started = asyncio.get_running_loop().time()
        future = traffic.watch(token.encode("ascii", "replace"))
        try:
            async with asyncio.timeout(timeout):
                handed = await future
                return handed.at - started, handed.reply
        except TimeoutError:
            return None
        finally:
            future.cancel()

    return watch
