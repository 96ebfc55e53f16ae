"""tunnelkeeper: keeps reverse SSH tunnels for mail and DNS open through a relay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError, TunnelError, TunnelkeeperError

if TYPE_CHECKING:
    from .config import Config, load

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "TunnelError", "TunnelkeeperError", "__version__", "load"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `tunnelkeeper --help` then needs neither pydantic nor the models.
    if name in ("Config", "load"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
