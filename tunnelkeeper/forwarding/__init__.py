"""Carrying connections through the tunnel: one runtime per forwarder (a forward or a local),
the byte splice, limits.

forwarder   ForwarderRuntime: what forwards and locals share: traffic, state, probe, snapshot
inbound     a remote forward: the relay listens, channels come in, we dial the target
outbound    a local forward: we listen here, each connection opens a channel to the relay
splice      the two-way copy between a channel and a socket
traffic     ForwardTraffic: what a forwarder carries and holds open, counted by its splices
mailwatch   check --mail's reading of an SMTP session: the reply to the end of the test message
admission   Admission: max_connections and the descriptor budget, one line per refusal burst
dial        the one way to a target: from `source`, a PROXY header first when asked
proxyheader the PROXY protocol v1/v2 header naming the relay
dnswire     DNS over TCP as the gate reads it: frames, header counts, parsing
dnsgate     what a dns forward lets through: queries for its zones; the rest answered REFUSED
notdns      what ends a dns forward's connection (no dnspython needed to catch it)
zonecut     asks the primary which zone a name below a zone's apex lies in
ratelog     log lines at a bounded rate
limits      the descriptor budget shared by every forward of the process
"""
