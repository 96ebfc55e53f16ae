"""Forwarding fixtures: the relay that answers on an address of its own."""

from tests.support.relay_address import relay  # noqa: F401 (a fixture for the source-address tests)
