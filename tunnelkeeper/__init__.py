"""tunnelkeeper: keeps reverse SSH tunnels for mail and DNS open through a relay."""

from .config import Config, load
from .errors import ConfigError, TunnelError, TunnelkeeperError

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "TunnelError", "TunnelkeeperError", "__version__", "load"]
