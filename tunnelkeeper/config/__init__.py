"""Configuration: pydantic models of the TOML file and `load(path)`; data only, validated once.

values   names, durations, endpoints, hops, proxies; control characters refused
models   the tables: [supervisor], [defaults], [[tunnel]], its forwards and locals
loading  find_config, load, from_dict; errors that name the file and the key
vetting  the files a loaded config names: credentials findable, none that others may change
"""

from ..filetrust import is_credential_name, secret_path
from .loading import find_config, from_dict, load
from .models import (
    Config,
    Defaults,
    Forward,
    Local,
    SupervisorSettings,
    Tunnel,
    TunnelSettings,
    default_control_socket,
    default_history_path,
)
from .values import (
    CONFIG_NAME,
    Endpoint,
    Hop,
    Proxy,
    ServiceKind,
    control_character,
    host_port,
    is_domain_name,
    is_ip,
    parse_endpoint,
    parse_hop,
    parse_proxy,
)

__all__ = [
    "CONFIG_NAME",
    "Config",
    "Defaults",
    "Endpoint",
    "Forward",
    "Hop",
    "Local",
    "Proxy",
    "ServiceKind",
    "SupervisorSettings",
    "Tunnel",
    "TunnelSettings",
    "control_character",
    "default_control_socket",
    "default_history_path",
    "find_config",
    "from_dict",
    "host_port",
    "is_credential_name",
    "is_domain_name",
    "is_ip",
    "load",
    "parse_endpoint",
    "parse_hop",
    "parse_proxy",
    "secret_path",
]
