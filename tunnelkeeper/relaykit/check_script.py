"""check-relay.sh: a POSIX sh script the relay admin runs to see that the kit is in effect."""

from __future__ import annotations

import shlex

from ..config import Config, Tunnel
from ..pubkey import read_public_key
from .common import SshServer, mail_routes
from .dropbear import keepalive
from .dropbear import key_options as dropbear_key_options
from .mailertable import mailer_name
from .openssh import key_options, match_settings
from .postfix import nexthop

_HEAD = """\
#!/bin/sh
# check-relay.sh, written by `tunnelkeeper relay-kit` for tunnel {name} ({relay}).
# Run it as root on the relay, from the kit's folder, once the files are installed where
# README.md says: it changes nothing, prints one line per check that starts with "ok" or
# "FAIL", and exits 0 only when every check passed. It takes no arguments.
#
# Where it looks; set any of these in the environment to look elsewhere:
{variables}
set -u
"""

_LIB = """
failed=0
pass() {{ printf 'ok %s\\n' "$1"; }}
fail() {{ printf 'FAIL %s\\n' "$1"; failed=1; }}
first_line() {{ printf '%s\\n' "$1" | sed -n '1{{s/[[:cntrl:]]//g;p;}}'; }}
have() {{ command -v "$1" >/dev/null 2>&1; }}

# The local addresses that something listens on, one per line, as host:port.
listening() {{
    if have ss; then
        ss -Hltn | awk '{{print $4}}'
    else
        netstat -ltn | awk 'NR > 2 {{print $4}}'
    fi
}}

check_listen() {{  # HOST PORT
    if listening | grep -qxF -e "$1:$2" -e "[$1]:$2"; then
        pass "something listens on $1:$2 (the tunnel is up)"
    else
        fail "nothing listens on $1:$2: the tunnel is down (tunnelkeeper status) or refused"
    fi
}}

# Whether file $1 was made after file $2 (a map rebuilt after its source changed).
newer() {{ [ -n "$(find "$1" -prune -newer "$2" 2>/dev/null)" ]; }}

if [ "$(id -u)" = 0 ]; then pass "running as root"; else fail "running as root (use sudo)"; fi
"""

_KEY = """
# -- the SSH account ------------------------------------------------------------------
home=$(getent passwd "$TK_USER" | cut -d: -f6)
if [ -n "$home" ]; then pass "account $TK_USER exists"; else fail "account $TK_USER exists"; fi
keys=${{TK_AUTHORIZED_KEYS:-$home/.ssh/authorized_keys}}
if grep -qxF {line} "$keys" 2>/dev/null; then
    pass "$keys has the kit's key line ({fingerprint})"
else
    fail "$keys has the kit's key line ({fingerprint}): install the kit's authorized_keys"
fi
"""

_SSHD = """
# -- sshd applies the Match block to the account --------------------------------------
connection="user=$TK_USER,host=internal,addr=127.0.0.1"
if settings=$("$TK_SSHD" -T -f "$TK_SSHD_CONFIG" -C "$connection" 2>&1); then
    for want in {wanted}; do
        if printf '%s\\n' "$settings" | grep -qixF "$want"; then
            pass "sshd -T for $TK_USER: $want"
        else
            got=$(printf '%s\\n' "$settings" | grep -i "^${{want%% *}} " || echo unset)
            fail "sshd -T for $TK_USER: $want (it says: $got): is the Match block installed?"
        fi
    done
else
    fail "sshd -T reads $TK_SSHD_CONFIG: $(first_line "$settings")"
fi
"""

_DROPBEAR = """
# -- Dropbear's account shell and command line ----------------------------------------
shell=$(getent passwd "$TK_USER" | cut -d: -f7)
if [ -n "$home" ] && grep -qxF "${{shell:-/bin/sh}}" /etc/shells; then
    pass "shell ${{shell:-/bin/sh}} of $TK_USER is in /etc/shells (Dropbear refuses others)"
else
    fail "shell $shell of $TK_USER is not in /etc/shells: Dropbear refuses the login"
fi
args=${{TK_DROPBEAR_ARGS:-$(for f in /proc/[0-9]*/cmdline; do
    tr '\\000' ' ' 2>/dev/null < "$f" | grep -E '^[^ ]*dropbear ' ; done | head -n 1)}}
if [ -z "$args" ]; then
    fail "dropbear is running"
else
    keep=$(printf '%s\\n' "$args" | sed -n 's/.* -K *\\([0-9][0-9]*\\).*/\\1/p')
    if [ -n "$keep" ] && [ "$keep" -ge 1 ] && [ "$keep" -le {keepalive} ]; then
        pass "dropbear runs with -K $keep (at most {keepalive})"
    else
        fail "dropbear runs with -K {keepalive} or less (its command line: $args)"
    fi
    case " $args " in
    *" -j "* | *" -k "*) fail "dropbear runs without -j and -k (its command line: $args)" ;;
    *) pass "dropbear runs without -j and -k" ;;
    esac
fi
"""

_SENDMAIL = """
# -- sendmail routes the domains to the tunnel mailer ---------------------------------
if have "$TK_SENDMAIL"; then
    for pair in {pairs}; do
        address=${{pair%% *}} mailer=${{pair#* }}
        route=$(printf '/parse %s\\n' "$address" | "$TK_SENDMAIL" -C "$TK_SENDMAIL_CF" -bt 2>&1 |
            grep '^mailer ' | tail -n 1)
        case "$route" in
        "mailer $mailer, "*) pass "sendmail -bt: $address goes to mailer $mailer" ;;
        *) fail "sendmail -bt: $address goes to mailer $mailer, not: ${{route:-no route}}" ;;
        esac
    done
else
    fail "sendmail is installed ($TK_SENDMAIL)"
fi
map=${{TK_MAILERTABLE_MAP:-$TK_MAILERTABLE.db}}
rebuild="makemap hash $TK_MAILERTABLE < $TK_MAILERTABLE"
if [ ! -e "$map" ]; then
    fail "$map exists: $rebuild"
elif newer "$map" "$TK_MAILERTABLE"; then
    pass "$map is newer than $TK_MAILERTABLE"
else
    fail "$map is newer than $TK_MAILERTABLE: $rebuild"
fi
"""

_POSTFIX = """
# -- Postfix routes the domains down the tunnel ---------------------------------------
for pair in {pairs}; do
    key=${{pair%% *}} want=${{pair#* }}
    got=$("$TK_POSTMAP" -q "$key" "hash:$TK_TRANSPORT" 2>&1)
    if [ "$got" = "$want" ]; then
        pass "postmap -q $key: $want"
    else
        fail "postmap -q $key: $want, not: $(first_line "${{got:-nothing}}")"
    fi
done
if newer "$TK_TRANSPORT.db" "$TK_TRANSPORT"; then
    pass "$TK_TRANSPORT.db is newer than $TK_TRANSPORT"
else
    fail "$TK_TRANSPORT.db is newer than $TK_TRANSPORT: postmap $TK_TRANSPORT"
fi
"""

# perl-base is on every Debian system; a sh script has no SMTP client of its own.
_ETRN = r"""
# -- the MTA answers ETRN, so held mail goes out as soon as the tunnel is whole again -
# (Each ETRN starts a delivery attempt for that domain's queued mail, as tunnelkeeper's do.)
etrn() {{  # HOST PORT ARGUMENT: the MTA's last reply, to ETRN ARGUMENT (or what stopped it)
    perl -MIO::Socket::INET -e '
        my ($host, $port, $arg) = @ARGV;
        $SIG{{ALRM}} = sub {{ print "no answer within 20s\n"; exit 0 }};
        alarm 20;
        my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => "tcp")
            or do {{ print "cannot connect: $!\n"; exit 0 }};
        sub reply {{
            while (defined(my $line = <$s>)) {{ return $line if $line =~ /^\d{{3}}(?: |\r?$)/ }}
            return "the connection closed\n";
        }}
        my $r = reply();
        if ($r =~ /^220/) {{ print $s "EHLO check-relay.tunnelkeeper\r\n"; $r = reply() }}
        if ($r =~ /^250/) {{ print $s "ETRN $arg\r\n"; $r = reply(); print $s "QUIT\r\n" }}
        $r =~ s/[[:cntrl:]]//g;
        print substr($r, 0, 200), "\n";
    ' "$1" "$2" "$3"
}}
mta_host=${{TK_RELAY_MTA%:*}} mta_port=${{TK_RELAY_MTA##*:}}
mta_host=${{mta_host#[}} mta_host=${{mta_host%]}}
if [ "$TK_MTA" = postfix ]; then
    why="list the domains in fast_flush_domains; smtpd_etrn_restrictions must permit 127.0.0.1"
else
    why="no noetrn in PrivacyOptions, no E in the daemon's Modifiers, no check_etrn refusing it"
fi
if have perl; then
    for arg in {args}; do
        reply=$(etrn "$mta_host" "$mta_port" "$arg")
        case "$reply" in
        25[0-3]" "*) pass "the MTA on $TK_RELAY_MTA answers ETRN $arg: $reply" ;;
        *) fail "the MTA on $TK_RELAY_MTA answers ETRN $arg with 250, not: $reply ($why)" ;;
        esac
    done
else
    fail "perl is installed (to ask the MTA on $TK_RELAY_MTA for ETRN)"
fi
"""

_NAMED = """
# -- named takes the secondary zones --------------------------------------------------
if out=$(named-checkconf "$TK_NAMED_CONF" 2>&1); then
    pass "named-checkconf accepts $TK_NAMED_CONF"
    loaded=$(named-checkconf -p "$TK_NAMED_CONF" 2>/dev/null)
    for zone in {zones}; do
        if printf '%s\\n' "$loaded" | grep -qF "zone \\"$zone\\""; then
            pass "named.conf has zone $zone"
        else
            fail "named.conf has zone $zone: include the kit's named.conf.tunnelkeeper there"
        fi
    done
else
    fail "named-checkconf accepts $TK_NAMED_CONF: $(first_line "$out")"
fi
"""

_TAIL = """
# -- the tunnel's listeners -----------------------------------------------------------
{listens}

exit "$failed"
"""


def _words(values: list[str]) -> str:
    return " ".join(shlex.quote(value) for value in values)


def check_relay(config: Config, tun: Tunnel, sshd: SshServer, *, mail: bool, dns: bool) -> str:
    """The script for one tunnel's relay; `mail`/`dns` say which parts the kit has."""
    key = read_public_key(tun)
    options = dropbear_key_options(tun) if sshd == "dropbear" else key_options(tun)
    variables: list[tuple[str, str, str]] = [
        ("TK_USER", tun.user, "the relay account"),
        ("TK_AUTHORIZED_KEYS", "", "its authorized_keys (default: ~TK_USER/.ssh/...)"),
    ]
    if sshd == "openssh":
        variables += [
            ("TK_SSHD", "sshd", "the sshd program"),
            ("TK_SSHD_CONFIG", "/etc/ssh/sshd_config", "the sshd_config that includes the block"),
        ]
    else:
        variables.append(("TK_DROPBEAR_ARGS", "", "dropbear's command line (default: from ps)"))
    if mail:
        variables += [
            ("TK_MTA", "sendmail", "sendmail or postfix"),
            ("TK_SENDMAIL", "sendmail", "the sendmail program"),
            ("TK_SENDMAIL_CF", "/etc/mail/sendmail.cf", "the sendmail.cf in use"),
            ("TK_MAILERTABLE", "/etc/mail/mailertable", "the mailertable source"),
            ("TK_MAILERTABLE_MAP", "", "its map (default: TK_MAILERTABLE.db)"),
            ("TK_TRANSPORT", "/etc/postfix/transport", "Postfix's transport map source"),
            ("TK_POSTMAP", "postmap", "Postfix's postmap program"),
        ]
    if mail and _etrn_args(tun):
        variables.append(("TK_RELAY_MTA", str(tun.relay_mta), "the MTA asked for ETRN"))
    if dns:
        variables.append(("TK_NAMED_CONF", "/etc/bind/named.conf", "the named.conf to check"))
    width = max(len(f"{name}={default}") for name, default, _ in variables)
    lines = [f"#   {name + '=' + default:<{width}}  {what}" for name, default, what in variables]
    assigns = [f': "${{{name}:={shlex.quote(default)}}}"' for name, default, _ in variables]
    text = _HEAD.format(name=tun.name, relay=tun.relay, variables="\n".join(lines))
    # Variables without a default here get theirs from another one, where they are used.
    text += "\n".join(a for a in assigns if not a.endswith(":=''}\"")) + "\n"
    text += _LIB.format()
    text += _KEY.format(line=shlex.quote(f"{options} {key}"), fingerprint=key.fingerprint)
    if sshd == "openssh":
        wanted = [f"{k.lower()} {v}" for k, v in match_settings((tun,))]
        text += _SSHD.format(wanted=_words(wanted))
    else:
        text += _DROPBEAR.format(keepalive=keepalive(tun).interval)
    if mail:
        routes = mail_routes(config, tun.name)
        addresses = [
            (f"postmaster@{'sub' + r.key if r.key.startswith('.') else r.key}", r) for r in routes
        ]
        sendmail = _SENDMAIL.format(
            pairs=_words([f"{a} {mailer_name(r.port)}" for a, r in addresses])
        )
        postfix = _POSTFIX.format(pairs=_words([f"{r.key} {nexthop(r)}" for r in routes]))
        text += '\nif [ "$TK_MTA" = postfix ]; then\n' + _indent(postfix.lstrip("\n"))
        text += "else\n" + _indent(sendmail.lstrip("\n")) + "fi\n"
        if args := _etrn_args(tun):
            text += _ETRN.format(args=_words(args))
    if dns:
        zones = dict.fromkeys(z for f in tun.forward if f.service == "dns" for z in f.zones)
        text += _NAMED.format(zones=_words(list(zones)))
    endpoints = dict.fromkeys((f.listen.host, f.listen.port) for f in tun.forward)
    checks = [f"check_listen {shlex.quote(host)} {port}" for host, port in endpoints]
    return text + _TAIL.format(listens="\n".join(checks))


def _etrn_args(tun: Tunnel) -> list[str]:
    """What tunnelkeeper sends ETRN for: each domain of each smtp forward with `etrn` on."""
    args = [arg for f in tun.forward if f.flushes for _, arg in f.etrn_arguments]
    return list(dict.fromkeys(args))


def _indent(block: str) -> str:
    return "".join(f"    {line}" if line.strip() else line for line in block.splitlines(True))


def readme_section(name: str, *, mail: bool) -> str:
    """The kit README's section on running the script."""
    mta = f" For a Postfix relay run it as `TK_MTA=postfix sh {name}`." if mail else ""
    return f"""
## 6. Check it all

```sh
sudo sh {name}
```

It changes nothing. It prints one line per check, `ok ...` or `FAIL ...` with what to do, and
exits 0 only when every check passed: the account's key line, what the SSH server applies to the
account, the mail routes and maps, that the MTA answers ETRN for each domain (with 250, as
section 2 or 3 says), named's configuration, and that the tunnel's ports listen
(which they do only while tunnelkeeper is connected). Its first lines name the paths it
looks at; set any of them in the environment where this relay keeps its files elsewhere.{mta}
"""
