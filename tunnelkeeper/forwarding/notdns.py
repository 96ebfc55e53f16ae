"""What ends a dns forward's connection, apart from the gate itself (which imports dnspython):
the splice of every forward catches these, and a forward that carries no DNS never loads it."""


class NotDns(Exception):
    """What the relay side sent is not DNS over TCP: the connection is closed."""


class TooManyRefusals(NotDns):
    """The relay side drew more than MAX_REFUSALS refusals: the connection is closed."""
