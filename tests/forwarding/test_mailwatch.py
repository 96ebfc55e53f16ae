"""SessionWatch reads a forwarded SMTP session the way check --mail needs it: the watch ends
at the target's reply to the end of the message that carried the token, whatever the reads'
boundaries, with PIPELINING, DATA or BDAT; and with no reply when the session ends first.
(The whole path, with real sendmail and Postfix relays, is in tests/checks.)"""

from __future__ import annotations

import asyncio

from tunnelkeeper.forwarding.mailwatch import Handover, SessionWatch

TOKEN = b"0123456789abcdef"
MAIL = b"MAIL FROM:<tunnelkeeper-test+" + TOKEN + b"@relay> SIZE=300\r\n"
BODY = b"Subject: test\r\nX-Tunnelkeeper-Test: 0123456789abcdef\r\n\r\nbody\r\n"


async def watched(
    relay: list[bytes], target: list[bytes], end: bool = False
) -> tuple[Handover | None, list[bool]]:
    """Feed the two sides' reads alternately (relay first); return the handover, if any,
    and after each target read whether it was there."""
    future: asyncio.Future[Handover] = asyncio.get_running_loop().create_future()
    watch = SessionWatch({TOKEN: future})
    done_after: list[bool] = []
    for i in range(max(len(relay), len(target))):
        if i < len(relay):
            watch.from_relay(relay[i])
        if i < len(target):
            watch.from_target(target[i])
            done_after.append(future.done())
    if end:
        watch.ended()
    return (future.result() if future.done() else None), done_after


def test_the_reply_to_the_end_of_data_not_the_one_to_mail_from() -> None:
    relay = [b"EHLO relay\r\n", MAIL, b"RCPT TO:<postmaster@example.org>\r\n", b"DATA\r\n"]
    relay += [BODY + b".\r\n", b"QUIT\r\n"]
    target = [b"250-mail\r\n250 PIPELINING\r\n", b"250 2.1.0 Sender ok\r\n", b"250 2.1.5 ok\r\n"]
    target += [b"354 go ahead\r\n", b"250 2.0.0 queued as X\r\n", b"221 bye\r\n"]
    handed, done = asyncio.run(watched(relay, target))
    assert done == [False, False, False, False, True, True]
    assert handed is not None and handed.accepted and handed.reply == "250 2.0.0 queued as X"


def test_pipelined_commands_and_a_multiline_refusal() -> None:
    relay = [b"EHLO relay\r\n", MAIL + b"RCPT TO:<postmaster@example.org>\r\nDATA\r\n"]
    relay += [BODY + b".\r\nQUIT\r\n"]
    target = [b"250-mail\r\n250 PIPELINING\r\n", b"250 ok\r\n250 ok\r\n354 go\r\n"]
    target += [b"554-5.7.1 refused\r\n554 5.7.1 by policy\r\n221 bye\r\n"]
    handed, done = asyncio.run(watched(relay, target))
    assert done == [False, False, True]
    assert handed is not None and not handed.accepted
    assert handed.reply == "554-5.7.1 refused / 554 5.7.1 by policy"


def test_the_end_of_data_split_across_reads_and_a_reply_in_pieces() -> None:
    relay = [b"EHLO relay\r\n", MAIL[:20], MAIL[20:], b"RCPT TO:<p@example.org>\r\n"]
    relay += [b"DATA\r\n", BODY + b"\r", b"\n.", b"\r\n"]
    target = [b"250 mail\r\n", b"", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"", b""]
    target += [b"250 2.0", b".0 ok\r\n"]
    handed, done = asyncio.run(watched(relay, target))
    assert done == [False] * 8 + [True]
    assert handed is not None and handed.reply == "250 2.0.0 ok"


def test_bdat_last_chunk_with_the_token_inside() -> None:
    chunk = BODY + b"a line with CRLF.CRLF inside\r\n.\r\n"  # no end of data in BDAT
    relay = [b"EHLO relay\r\n", b"MAIL FROM:<a@b>\r\nRCPT TO:<p@example.org>\r\n"]
    relay += [b"BDAT %d LAST\r\n" % len(chunk) + chunk, b"QUIT\r\n"]
    target = [b"250 CHUNKING\r\n", b"250 ok\r\n250 ok\r\n", b"250 2.0.0 chunked ok\r\n"]
    handed, done = asyncio.run(watched(relay, target))
    assert done == [False, False, True]
    assert handed is not None and handed.reply == "250 2.0.0 chunked ok"


def test_a_session_cut_before_the_answer_hands_nothing_over() -> None:
    relay = [b"EHLO relay\r\n", MAIL, b"RCPT TO:<p@example.org>\r\n", b"DATA\r\n", BODY]
    target = [b"250 mail\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"]
    handed, done = asyncio.run(watched(relay, target, end=True))
    assert done == [False] * 4
    assert handed is not None and handed.reply is None and not handed.accepted


def test_control_characters_in_the_reply_are_escaped() -> None:
    relay = [b"EHLO r\r\n", MAIL, b"DATA\r\n", b".\r\n"]
    target = [b"250 m\r\n", b"250 ok\r\n", b"354 go\r\n", b"250 ok \x1b[2J done\r\n"]
    handed, _ = asyncio.run(watched(relay, target))
    assert handed is not None and handed.reply is not None
    assert "\x1b" not in handed.reply and handed.reply.startswith("250 ok ")


def test_a_sender_refused_before_the_data_is_the_answer() -> None:
    relay = [b"EHLO relay\r\n", MAIL, b"QUIT\r\n"]
    target = [b"250 mail\r\n", b"553 5.5.4 Real domain name required\r\n", b"221 bye\r\n"]
    handed, done = asyncio.run(watched(relay, target, end=True))
    assert done == [False, False, False]  # only the session's end settles it
    assert handed is not None and not handed.accepted
    assert handed.reply == "553 5.5.4 Real domain name required"


def test_a_pipelined_refusal_names_the_first_reason() -> None:
    relay = [b"EHLO relay\r\n", MAIL + b"RCPT TO:<p@example.org>\r\nDATA\r\n", b"QUIT\r\n"]
    target = [b"250 mail\r\n", b"553 5.5.4 Real domain name required\r\n503 5.0.0 Need MAIL\r\n"]
    target += [b"503 5.0.0 Need MAIL command\r\n221 bye\r\n"]
    handed, _ = asyncio.run(watched(relay, target, end=True))
    assert handed is not None and handed.reply == "553 5.5.4 Real domain name required"


def test_a_bdat_size_past_any_message_is_no_bug() -> None:
    """`BDAT` with thousands of digits (int() refuses past 4,300) is not a chunk: the watch
    goes on, and no exception reaches the splice (which would restart the tunnel)."""
    relay = [b"EHLO relay\r\n", MAIL, b"BDAT " + b"9" * 5000 + b" LAST\r\n", b"QUIT\r\n"]
    target = [b"250 mail\r\n", b"250 ok\r\n", b"500 5.5.2 syntax\r\n", b"221 bye\r\n"]
    handed, _ = asyncio.run(watched(relay, target, end=True))
    assert handed is None or not handed.accepted
