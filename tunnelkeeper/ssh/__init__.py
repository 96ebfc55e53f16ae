"""The SSH layer, the only code that imports asyncssh: key files, host-key policy, the
connection and its streams, the translation of every library error into tunnelkeeper's tree,
and an embedded relay.

    keys        private key and known_hosts checks, loading, new keys
    hostkeys    known_hosts as OpenSSH reads it, the verdict on the relay's key, pinning
    transport   the TCP transport under asyncssh (packet-sized reads, quick ACKs)
    translate   asyncssh/OSError exceptions -> tunnelkeeper errors, by our own checks
    streams     probe streams whose every call raises only tunnelkeeper errors
    connection  RelayConnection: connect, listen, open channels, notice the end
    relay       EmbeddedRelay for the demo and fault tests
"""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

# cryptography 51 warns whenever asyncssh merely names its DSA classes (at import, in type
# aliases, in key-type checks): blocks on stderr for every verb that touches SSH. tunnelkeeper
# never uses DSA keys, so that one warning, raised from asyncssh's own modules, says nothing to
# our users; every other warning, and this one from any other code, is still shown. Installed
# here, before the first import of asyncssh: every module of this package, and so every asyncssh
# import in tunnelkeeper, is loaded through this file.
warnings.filterwarnings(
    "ignore",
    message=r"DSA is deprecated",
    category=CryptographyDeprecationWarning,
    module=r"asyncssh(\.|$)",
)

from .connection import WINDOW, Listener, RelayConnection, connect
from .keys import (
    NewKey,
    check_identity_file,
    check_known_hosts,
    generate_rsa_key,
    load_identity,
    preflight,
)
from .relay import EmbeddedRelay
from .streams import Stream, StreamPair

__all__ = [
    "WINDOW",
    "EmbeddedRelay",
    "Listener",
    "NewKey",
    "RelayConnection",
    "Stream",
    "StreamPair",
    "check_identity_file",
    "check_known_hosts",
    "connect",
    "generate_rsa_key",
    "load_identity",
    "preflight",
]
