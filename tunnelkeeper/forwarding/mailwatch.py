"""check --mail's watch on one forwarded SMTP session: the test message counts as handed
over only when the internal server answered the end of the message that carried the token
(or the session ended first), not when the token went by.

The relay's side is read as an SMTP client's stream (command lines, a DATA body up to the line
".", BDAT chunks of a stated size) to number the replies it waits for; the target's side is
read as replies, so the reply to the end of that message is known by its number, pipelining
or not. Built only while a watch is pending, and only for sessions that start meanwhile.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from ..peertext import peer_text

WATCH_TAIL = 64  # longer than any token a mail test watches for
END_OF_DATA = b"\r\n.\r\n"
MAX_LINE = 2048  # a command or reply line kept at most this long (the rest is not needed)
MAX_REPLY_LINES = 8  # lines of a reply kept for the words


@dataclass(frozen=True)
class Handover:
    """How the session that carried a watched token handed the message to the target."""

    at: float  # the loop time of the answer (or of the session's end)
    # The target's reply to the end of the message (or its refusal of the message before
    # that: a MAIL FROM or RCPT TO answered 4xx/5xx), escaped; None: no answer came.
    reply: str | None

    @property
    def accepted(self) -> bool:
        return self.reply is not None and self.reply.startswith("2")


Watches = dict[bytes, "asyncio.Future[Handover]"]


class SessionWatch:
    """One forwarded connection's SMTP session, as far as the watched tokens need it."""

    def __init__(self, watches: Watches) -> None:
        self._watches = watches
        self._tail = b""  # the last bytes from the relay: a token may span two reads
        self._mode: Literal["command", "data", "chunk"] = "command"
        self._line = b""  # a command line begun
        self._body_tail = b""  # the end of the DATA body so far: the line "." may span reads
        self._chunk_left = 0  # bytes of a BDAT chunk still to come
        self._chunk_reply: int | None = None  # a BDAT ... LAST chunk: the number of its reply
        self._asked = 0  # replies the relay side waits for, numbered from 0 on
        self._answered = 0  # replies the target gave
        self._reply_line = b""
        self._reply: list[bytes] = []  # lines of the reply being read
        self._carrying: list[asyncio.Future[Handover]] = []  # tokens in the current message
        self._due: dict[int, list[asyncio.Future[Handover]]] = {}  # reply number -> tokens
        self._refusal: str | None = None  # the first 4xx/5xx since a token passed

    @property
    def busy(self) -> bool:
        """Whether a token passed here and its answer is still to come (for a test that
        still waits for it)."""
        waiting = self._carrying + [f for futures in self._due.values() for f in futures]
        return any(not f.done() for f in waiting)

    def from_relay(self, data: bytes) -> None:
        seen = self._tail + data
        for token, future in self._watches.items():
            if token in seen and not future.done() and not self._holds(future):
                self._carrying.append(future)
        self._tail = seen[-WATCH_TAIL:]
        at = 0
        while at < len(data):
            if self._mode == "command":
                end = data.find(b"\n", at)
                if end < 0:
                    self._line = (self._line + data[at:])[:MAX_LINE]
                    return
                self._command(self._line + data[at : end + 1])
                self._line = b""
                at = end + 1
            elif self._mode == "data":
                look = self._body_tail + data[at:]
                found = look.find(END_OF_DATA)
                if found < 0:
                    self._body_tail = look[-(len(END_OF_DATA) - 1) :]
                    return
                at += found + len(END_OF_DATA) - len(self._body_tail)
                self._mode, self._body_tail = "command", b""
                self._asked += 1
                self._message_end(self._asked - 1)
            else:
                took = min(self._chunk_left, len(data) - at)
                self._chunk_left -= took
                at += took
                if not self._chunk_left:
                    self._chunk_done()

    def from_target(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        lines = (self._reply_line + data).split(b"\n")
        self._reply_line = lines.pop()[:MAX_LINE]
        for line in lines:
            if len(self._reply) < MAX_REPLY_LINES:
                self._reply.append(line.rstrip(b"\r")[:MAX_LINE])
            if line[3:4] == b"-":
                continue  # more lines of this reply follow
            number, text = self._answered, peer_text(b" / ".join(self._reply))
            self._answered += 1
            self._reply = []
            if self._carrying and self._refusal is None and text[:1] in ("4", "5"):
                # The message may never reach its end: keep the first why (with PIPELINING,
                # a refused MAIL FROM is followed by "503 Need MAIL" answers).
                self._refusal = text
            for future in self._due.pop(number, []):
                if not future.done():
                    future.set_result(Handover(now, text))

    def ended(self) -> None:
        """The session is over: tokens still waiting for an answer got none, or the refusal
        that stopped their message before its end."""
        now = asyncio.get_running_loop().time()
        due = [f for futures in self._due.values() for f in futures]
        for future, reply in [(f, self._refusal) for f in self._carrying] + [
            (f, None) for f in due
        ]:
            if not future.done():
                future.set_result(Handover(now, reply))
        self._carrying, self._due = [], {}

    def _holds(self, future: asyncio.Future[Handover]) -> bool:
        return future in self._carrying or any(future in f for f in self._due.values())

    def _command(self, line: bytes) -> None:
        self._asked += 1
        words = line[:MAX_LINE].split()
        verb = words[0].upper() if words else b""
        if verb == b"DATA":
            self._mode, self._body_tail = "data", b"\r\n"  # the body may be just "."
        elif verb == b"BDAT" and len(words) >= 2 and words[1].isdigit() and len(words[1]) <= 10:
            last = len(words) > 2 and words[2].upper() == b"LAST"
            self._chunk_reply = self._asked - 1 if last else None
            self._chunk_left = int(words[1])
            self._mode = "chunk"
            if not self._chunk_left:
                self._chunk_done()

    def _chunk_done(self) -> None:
        self._mode = "command"
        if self._chunk_reply is not None:
            self._message_end(self._chunk_reply)
            self._chunk_reply = None

    def _message_end(self, reply: int) -> None:
        self._refusal = None
        if self._carrying:
            self._due.setdefault(reply, []).extend(self._carrying)
            self._carrying = []
