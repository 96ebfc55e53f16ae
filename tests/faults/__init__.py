"""The fault and hostile-input suite: real sshd, namespaces, signals, fuzzed input."""
