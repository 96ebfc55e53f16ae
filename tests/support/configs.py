"""Write tunnelkeeper.toml files for tests, pointing at a test sshd."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .sshd import Sshd


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(
    path: Path,
    sshd: Sshd,
    forwards: list[dict[str, Any]],
    *,
    supervisor: dict[str, Any] | None = None,
    name: str = "relay1",
    **tunnel: Any,
) -> Path:
    """A config with one tunnel to `sshd`; fast test timings unless overridden. host, port,
    user, identity and known_hosts default to the sshd's; any tunnel key may be given."""
    settings: dict[str, Any] = {
        "keepalive_interval": 1,
        "keepalive_count_max": 2,
        "connect_timeout": 5,
        "backoff_initial": 0.2,
        "backoff_max": 2.0,
        "stable_after": 5.0,
        "forward_retry": 0.5,
        "probe_interval": 0,
    }
    keys = {
        "host": "127.0.0.1",
        "port": sshd.port,
        "user": sshd.user,
        "identity": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts),
    }
    keys.update({k: tunnel.pop(k) for k in list(keys) if k in tunnel})
    settings.update(tunnel)
    sup = {
        "control_socket": str(path.parent / "control.sock"),
        "shutdown_grace": 3,
        "log_level": "debug",
    }
    sup.update(supervisor or {})
    lines = ["[supervisor]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in sup.items()]
    lines += [
        "",
        "[[tunnel]]",
        f'name = "{name}"',
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    for fwd in forwards:
        lines += ["", "[[tunnel.forward]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in fwd.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
