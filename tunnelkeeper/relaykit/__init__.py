"""The relay kit: pure functions from the config to the relay admin's files, one module each."""
