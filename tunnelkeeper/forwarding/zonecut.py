"""Which zone of the target a name lies in, as the target itself says: the zone-cut check of a
dns forward's gate.

A name below one of the forward's zones may still belong to another zone of the same server
(an internal-only child zone such as corp.example.org under example.org). The gate lets an
ordinary lookup below a zone's apex through only when the target, asked a SOA query for the
name with RD clear from a connection of our own (from the forward's source address), names
that very zone: the SOA's owner in the answer (the name is an apex) or in the authority
section (NODATA, NXDOMAIN). A positive answer without a SOA at the name (a CNAME, a DNAME)
says the name exists but not where the cut is: the check asks again one label up, and so on.

Verdicts are cached per name (bounded in entries and in time), and checks of one name running
at once share one question to the target.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from ..config import Endpoint

CHECK_TIMEOUT = 2.0  # seconds for one whole check, walk up included
CACHE_ENTRIES = 4096
CACHE_MAX_TTL = 60.0  # a verdict is kept at most this long, however long the SOA says
FAILURE_TTL = 5.0  # a check that got no usable answer is not repeated sooner than this

# The zone a name lies in, or why that could not be found out (the gate then refuses).
Owner = dns.name.Name | str
Ask = Callable[[dns.name.Name], Awaitable[dns.message.Message]]


def soa_owner(response: dns.message.Message, qname: dns.name.Name) -> tuple[Owner | None, float]:
    """What a response to `SOA qname` (RD clear) says of qname's zone, and for how long
    (seconds): the zone's name; None when the name exists but its zone is not said (ask one
    label up); or why nothing can be concluded."""
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return f"the target answered {dns.rcode.to_text(rcode)}", FAILURE_TTL
    if not response.flags & dns.flags.AA:
        return "the target is not authoritative for it", FAILURE_TTL
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA and rrset.name == qname:
            return qname, _soa_ttl(rrset)
    if response.answer:  # a CNAME or DNAME: the name exists, its zone is above it
        return None, min([CACHE_MAX_TTL, *(rrset.ttl for rrset in response.answer)])
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            if not qname.is_subdomain(rrset.name):
                return "the target's SOA is not above the name", FAILURE_TTL
            return rrset.name, _soa_ttl(rrset)
    return "no SOA in the target's answer (a referral)", FAILURE_TTL


def _soa_ttl(rrset: dns.rrset.RRset) -> float:
    # BIND gives the SOA of an NXDOMAIN to a SOA query a TTL of 0 (so that it is not cached as
    # the answer): the zone's negative-caching time (its minimum) still says how long the name
    # stays unknown.
    return float(min(CACHE_MAX_TTL, rrset.ttl or rrset[0].minimum, rrset[0].minimum))


def primary(target: Endpoint, source: str | None) -> Ask:
    """Ask the forward's target, over TCP from `source` (None: the kernel's choice)."""

    async def ask(name: dns.name.Name) -> dns.message.Message:
        query = dns.message.make_query(name, dns.rdatatype.SOA, flags=0)
        wire = query.to_wire()
        local = None if source is None else (source, 0)
        reader, writer = await asyncio.open_connection(target.host, target.port, local_addr=local)
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            response = dns.message.from_wire(await reader.readexactly(size))
        finally:
            writer.close()
        if not query.is_response(response):
            raise ValueError("not the answer to our question")
        return response

    return ask


class ZoneCuts:
    """The zone-cut checks of one forward, with their cache."""

    def __init__(
        self,
        ask: Ask,
        *,
        timeout: float = CHECK_TIMEOUT,
        entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ask = ask
        self._timeout = timeout
        self._entries = entries
        self._clock = clock
        self._cache: OrderedDict[dns.name.Name, tuple[float, Owner]] = OrderedDict()
        self._running: dict[dns.name.Name, tuple[asyncio.Future[Owner], list[int]]] = {}
        self.asked = 0  # questions put to the target

    def cached(self, name: dns.name.Name) -> Owner | None:
        """The cached verdict for `name`, None when there is none (or it expired)."""
        entry = self._cache.get(name)
        if entry is None:
            return None
        expires, owner = entry
        if self._clock() >= expires:
            del self._cache[name]
            return None
        return owner

    async def owner(self, name: dns.name.Name) -> Owner:
        """The zone `name` lies in on the target, or why it is not known. Never raises but
        CancelledError; a check no caller waits for any longer is cancelled."""
        known = self.cached(name)
        if known is not None:
            return known
        running = self._running.get(name)
        if running is None:
            running = (asyncio.ensure_future(self._find(name)), [0])
            self._running[name] = running
        future, waiting = running
        waiting[0] += 1
        try:
            return await asyncio.shield(future)
        finally:
            waiting[0] -= 1
            if not waiting[0]:
                self._running.pop(name, None)
                future.cancel()  # nothing when done

    async def _find(self, name: dns.name.Name) -> Owner:
        try:
            async with asyncio.timeout(self._timeout):
                owner, ttl = await self._walk(name)
        except TimeoutError:
            owner, ttl = f"no answer from the target in {self._timeout:g} s", FAILURE_TTL
        except (OSError, EOFError, dns.exception.DNSException, ValueError) as exc:
            owner, ttl = f"the target could not be asked ({type(exc).__name__})", FAILURE_TTL
        self._remember(name, owner, ttl)
        return owner

    async def _walk(self, name: dns.name.Name) -> tuple[Owner, float]:
        ttl, asked = CACHE_MAX_TTL, name
        while True:
            self.asked += 1
            owner, valid = soa_owner(await self._ask(asked), asked)
            ttl = min(ttl, valid)
            if owner is not None:
                return owner, ttl
            if asked == dns.name.root:
                return "no zone above the name", FAILURE_TTL
            asked = asked.parent()

    def _remember(self, name: dns.name.Name, owner: Owner, ttl: float) -> None:
        if ttl <= 0:
            return
        self._cache[name] = (self._clock() + ttl, owner)
        self._cache.move_to_end(name)
        while len(self._cache) > self._entries:
            self._cache.popitem(last=False)
