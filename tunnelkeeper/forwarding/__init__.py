"""Carrying connections through the tunnel: one runtime per forwarder (a forward or a local),
the byte splice, limits.

endpoint    ForwarderRuntime: what forwards and locals share: traffic, state, probe, snapshot
inbound     a remote forward: the relay listens, channels come in, we dial the target
outbound    a local forward: we listen here, each connection opens a channel to the relay
splice      the two-way copy between a channel and a socket, and ForwardTraffic
admission   Admission: max_connections and the descriptor budget, one line per refusal burst
limits      the descriptor budget shared by every forward of the process
"""
