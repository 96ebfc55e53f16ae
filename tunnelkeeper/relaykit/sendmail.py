"""sendmail mailer definitions that dial the tunnel ports: cf `M` lines or the .mc text."""

from __future__ import annotations

from ..config import Config
from .common import mail_routes
from .mailertable import mailer_name

# sendmail 8.17's esmtp mailer as cf/mailer/smtp.m4 expands it (F=mDFMuXa), with "0" added so
# that no MX lookup happens and with the tunnel port after $h in A=.
_MAILER = """\
M{name},\tP=[IPC], F=mDFMuXa0, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, E=\\r\\n, L=990,
\t\tT=DNS/RFC822/SMTP,
\t\tA=TCP $h {port}"""

_CF_HEADER = """\
# sendmail mailers written by tunnelkeeper: copies of the esmtp mailer that dial a tunnel port
# on this host (A=TCP $h PORT; F=0: no MX lookup). The mailertable names them.
# These lines go after the other mailers at the end of sendmail.cf; a rebuild from sendmail.mc
# drops them, so prefer the .mc text of `tunnelkeeper sendmail-mailer --m4`.
"""

# m4 drops everything after dnl, so these comments do not reach sendmail.cf.
_M4_HEADER = """\
dnl sendmail.mc text written by tunnelkeeper: mailers that dial the tunnel ports on this host.
dnl Paste it after the MAILER lines at the end of sendmail.mc, keep FEATURE mailertable on,
dnl then rebuild sendmail.cf (Debian: sendmailconfig; elsewhere: cd /etc/mail && make).
"""


def ports(config: Config, tunnel: str | None = None) -> tuple[int, ...]:
    """The distinct relay-side ports the mailertable sends mail to, ascending."""
    return tuple(sorted({route.port for route in mail_routes(config, tunnel)}))


def mailer(port: int) -> str:
    """One mailer definition (three lines, no final newline)."""
    return _MAILER.format(name=mailer_name(port), port=port)


def mailer_definitions(config: Config, tunnel: str | None = None) -> str:
    """The `M` lines for sendmail.cf."""
    return _CF_HEADER + "".join(f"{mailer(port)}\n" for port in ports(config, tunnel))


def mailer_definitions_m4(config: Config, tunnel: str | None = None) -> str:
    """The MAILER_DEFINITIONS block for sendmail.mc."""
    body = "".join(f"{mailer(port)}\n" for port in ports(config, tunnel))
    return f"{_M4_HEADER}MAILER_DEFINITIONS\n{body}"
