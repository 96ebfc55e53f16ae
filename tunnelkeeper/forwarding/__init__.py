"""Carrying connections through the tunnel: one runtime per forward, the byte splice, limits.

endpoint    what every forward and local forward shares: state, probe result, snapshot
inbound     a remote forward: the relay listens, channels come in, we dial the target
outbound    a local forward: we listen here, each connection opens a channel to the relay
splice      the two-way copy between a channel and a socket, and its traffic counters
dnsgate     what a dns forward lets through: queries for its zones; the rest answered REFUSED
limits      the descriptor budget shared by every forward of the process
"""
