"""Text that a peer chose (SSH banners and DISCONNECT reasons, channel-open failures, SMTP
greetings, DNS answers) made safe to show: control characters escaped, length capped."""

from __future__ import annotations

import logging
import re

MAX_PEER_TEXT = 200
# C0 and C1 controls, DEL, and the bidirectional overrides and isolates that reorder what a
# terminal shows (a line could read differently from what it says).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control or bidi character written as a visible escape."""
    return _UNSAFE.sub(_escape_char, text)


def peer_text(value: str | bytes | None, limit: int = MAX_PEER_TEXT) -> str:
    """What a peer said, escaped and capped at `limit` characters (then "…")."""
    if value is None:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    capped = text[:limit]
    safe = escape(capped)
    return safe + "…" if len(text) > limit else safe


def quoted(who: str, value: str | bytes | None) -> str:
    """`who said "…"`: a peer's words, labelled as theirs, for an error message."""
    return f'{who} said "{peer_text(value)}"'


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in every record's message, so no text that reached a log
    call can forge a line or drive the terminal; the traceback, ours, stays as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)
