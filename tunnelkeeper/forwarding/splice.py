"""The splice between one relay channel and one local TCP connection.

The channel side is duck-typed to asyncssh's SSHTCPSession (connection_made, data_received,
eof_received, connection_lost, pause/resume_writing), so this module needs no asyncssh import.
Flow control is end to end: a full local socket pauses the channel and a full channel window
pauses the local socket, so a slow target never makes us buffer a whole message in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Endpoint
from .dial import dial
from .mailwatch import SessionWatch
from .notdns import NotDns, TooManyRefusals
from .traffic import ForwardTraffic

if TYPE_CHECKING:  # dnspython is loaded only where a dns forward is configured
    from .dnsgate import DnsGate
    from .zonecut import Owner

log = logging.getLogger(__name__)


class Channel(Protocol):
    """What a splice needs of an SSH channel."""

    def write(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


# REFUSED replies held back before the relay side is read no more (at most MAX_REFUSALS of
# them, each under 300 bytes, are ever drawn by one connection).
HELD_REFUSALS = 4 * 1024


class _LocalSide(asyncio.Protocol):
    """The TCP connection to the local target."""

    def __init__(self, splice: Splice) -> None:
        self._splice = splice

    def data_received(self, data: bytes) -> None:
        self._splice.from_target(data)

    def eof_received(self) -> bool:
        self._splice.target_eof()
        return True  # keep the write side open: half-close like OpenSSH does

    def connection_lost(self, exc: Exception | None) -> None:
        self._splice.close()

    def pause_writing(self) -> None:
        self._splice.pause_channel()

    def resume_writing(self) -> None:
        self._splice.resume_channel()


class Splice:
    """One forwarded connection: relay channel <-> local target."""

    def __init__(self, traffic: ForwardTraffic) -> None:
        self._traffic = traffic
        self._chan: Channel | None = None
        self._local: asyncio.Transport | None = None
        self._pending: list[bytes] = []  # target data that came before the channel opened
        self._pending_eof = False
        self._relay_eof = False  # the relay side said it sends no more
        self._target_eof = False  # the target said it sends no more
        self._target_full = False  # the local socket's write buffer is above its high water
        self._flushing = False  # the channel is handing us what it held while paused
        self._closed = False
        self._mail: SessionWatch | None = None  # check --mail's reading of this session
        self._relay_spoke = False  # the relay side sent its first bytes
        self._gate: DnsGate | None = None if traffic.dns is None else traffic.dns.gate()
        self._gate_paused = False  # the gate holds too many replies: the channel is not read
        self._check: asyncio.Future[Owner] | None = None  # the gate's zone-cut check, running

    async def connect_target(
        self, target: Endpoint, source: str | None, timeout: float, header: bytes = b""
    ) -> None:
        """Open the local side from `source`, `header` first. Raises TargetUnavailable
        (SourceUnavailable when `source` is not this host's)."""
        self._local, _ = await dial(lambda: _LocalSide(self), target, source, timeout, header)
        self._traffic.opened(self)

    # -- channel side (called by asyncssh) --------------------------------------------------

    # asyncssh calls these from inside its packet handling, where an exception would end the
    # whole SSH connection with every other forwarded connection on it: a bug ends only this
    # splice, and is reported.

    def connection_made(self, chan: Any) -> None:
        try:
            self._chan = chan
            for data in self._pending:
                chan.write(data)
            self._pending.clear()
            if self._pending_eof:
                chan.write_eof()
        except Exception as exc:
            self._failed(exc)

    def session_started(self) -> None:
        pass

    def data_received(self, data: bytes, datatype: Any) -> None:
        try:
            if self._gate is not None:
                self._gated(self._gate, data)
                return
            self._traffic.bytes_in += len(data)
            if not self._relay_spoke and self._traffic.watches:  # a session begins: read it
                self._mail = SessionWatch(self._traffic.watches)
            self._relay_spoke = True
            if self._mail is not None:
                self._mail.from_relay(data)
                if not self._mail.busy and not self._traffic.watches:
                    self._mail = None  # nothing left to wait for here
            if self._local is not None:
                self._local.write(data)
        except Exception as exc:
            self._failed(exc)

    def eof_received(self) -> bool:
        try:
            self._relay_eof = True
            if self._check is not None:
                return True  # passed on once the frames waiting for a check went on
            return self._relay_done()
        except Exception as exc:
            self._failed(exc)
            return False

    def _relay_done(self) -> bool:
        """The relay side's EOF, once every frame before it went on: half-close the target."""
        if self._gate is not None:
            try:
                self._gate.client_eof()
            except NotDns as exc:
                self._not_dns(self._gate, exc)
                return False
        if self._target_eof or self._local is None or not self._local.can_write_eof():
            self.close()  # both directions are done (or cannot half-close): finish now
            return False
        self._local.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.close()
        except Exception as bug:
            self._failed(bug)

    def pause_writing(self) -> None:
        try:
            if self._gate is not None:
                self._gate.channel_full = True
            if self._local is not None:
                self._local.pause_reading()
        except Exception as exc:
            self._failed(exc)

    def resume_writing(self) -> None:
        try:
            if self._gate is not None:
                self._gate.channel_full = False
                self._write_held(self._gate)
            if self._local is not None:
                self._local.resume_reading()
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self._traffic.bug(exc)
        with contextlib.suppress(Exception):
            self.abort()

    # -- target side (called by _LocalSide) -------------------------------------------------

    def from_target(self, data: bytes) -> None:
        try:
            self._traffic.bytes_out += len(data)
            if self._mail is not None:
                self._mail.from_target(data)
            if self._chan is None:
                self._pending.append(data)
            elif self._gate is not None and (split := self._gate.split_reply(data)):
                at, refusals = split  # REFUSED replies held until a message of the target ended
                self._chan.write(data[:at])
                for reply in refusals:
                    self._chan.write(reply)
                self._chan.write(data[at:])
                self._unblock_gate()
            else:
                self._chan.write(data)
        except OSError:  # the channel closed under us (BrokenPipeError): this splice is over
            self.abort()
        except Exception as exc:
            self._failed(exc)

    def target_eof(self) -> None:
        try:
            self._target_eof = True
            if self._chan is None:
                self._pending_eof = True
            elif self._relay_eof:
                self.close()  # both directions are done
            else:
                self._chan.write_eof()
        except OSError:
            self.abort()
        except Exception as exc:
            self._failed(exc)

    def pause_channel(self) -> None:
        self._target_full = True
        if self._chan is not None and not self._flushing:
            self._chan.pause_reading()

    def resume_channel(self) -> None:
        self._target_full = False
        if not self._gate_paused and self._check is None:
            self._resume_reading()

    def _resume_reading(self) -> None:
        # asyncssh reopens the whole SSH window on the first packet it delivers after a pause,
        # however much it still holds; pausing again mid-flush would leave that on top of a
        # fresh window, and the backlog would grow by up to a window per cycle without bound.
        # So take everything it held (at most one window) into the local socket's buffer,
        # then pause again if that filled it.
        if self._chan is None:
            return
        self._flushing = True
        try:
            self._chan.resume_reading()
        finally:
            self._flushing = False
        if self._closed:
            return
        if self._target_full or self._gate_paused or self._check is not None:
            self._chan.pause_reading()

    # -- the gate of a dns forward ----------------------------------------------------------

    def _gated(self, gate: DnsGate, data: bytes) -> None:
        try:
            passed, refusals = gate.from_client(data)
        except NotDns as exc:
            self._not_dns(gate, exc)
            return
        self._gate_out(gate, passed, refusals)

    def _gate_out(self, gate: DnsGate, passed: list[bytes], refusals: list[bytes]) -> None:
        for frame in passed:
            self._traffic.bytes_in += len(frame)
            if self._local is not None:
                self._local.write(frame)
        if self._chan is not None:
            for reply in refusals:
                self._chan.write(reply)
        if gate.held_bytes > HELD_REFUSALS and self._chan is not None:
            self._gate_paused = True  # the relay side is not reading its answers
            if not self._flushing:
                self._chan.pause_reading()
        check = gate.check
        if check is not None and self._check is None:
            # Ask the target; nothing more is read from the relay side until it answered.
            self._check = asyncio.ensure_future(gate.policy.cuts.owner(check.name))
            self._check.add_done_callback(self._checked)
            if self._chan is not None and not self._flushing:
                self._chan.pause_reading()

    def _checked(self, done: asyncio.Future[Owner]) -> None:
        if done is not self._check or self._closed:
            return  # cancelled: the connection closed meanwhile
        self._check = None
        if done.cancelled():
            self.abort()
            return
        gate = self._gate
        assert gate is not None
        try:
            try:
                passed, refusals = gate.decide(done.result())
            except NotDns as exc:
                self._not_dns(gate, exc)
                return
            self._gate_out(gate, passed, refusals)
            if self._check is not None or self._closed:
                return  # another check: still not reading
            if self._relay_eof:
                self._relay_done()
            elif not self._target_full and not self._gate_paused:
                self._resume_reading()
        except OSError:  # the channel closed under us
            self.abort()
        except Exception as exc:
            self._failed(exc)

    def _not_dns(self, gate: DnsGate, exc: NotDns) -> None:
        if isinstance(exc, TooManyRefusals):
            gate.policy.flooded()  # logged at a bounded rate: a relay user can repeat it
        else:
            log.info("forward %s: %s; connection closed", gate.forward, exc)
        self.abort()

    def _write_held(self, gate: DnsGate) -> None:
        if self._chan is not None:
            for reply in gate.take_held():
                self._chan.write(reply)
        self._unblock_gate()

    def _unblock_gate(self) -> None:
        gate = self._gate
        if self._gate_paused and gate is not None and gate.held_bytes <= HELD_REFUSALS:
            self._gate_paused = False
            if not self._target_full and self._check is None:
                self._resume_reading()

    # -- both -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._mail is not None:
            self._mail.ended()
            self._mail = None
        if self._check is not None:
            self._check.cancel()
            self._check = None
        if self._local is not None:
            self._local.close()
        if self._chan is not None:
            self._chan.close()
        self._traffic.closed(self)

    def abort(self) -> None:
        if self._local is not None:
            self._local.abort()
        self.close()
