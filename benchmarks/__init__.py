"""tunnelkeeper benchmarks against OpenSSH `ssh -R` and autossh (see BENCHMARKS.md)."""
