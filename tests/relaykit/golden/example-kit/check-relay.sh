#!/bin/sh
# check-relay.sh, written by `tunnelkeeper relay-kit` for tunnel relay1 (tunnel@relay.example.net:22).
# Run it as root on the relay, from the kit's folder, once the files are installed where
# README.md says: it changes nothing, prints one line per check that starts with "ok" or
# "FAIL", and exits 0 only when every check passed. It takes no arguments.
#
# Where it looks; set any of these in the environment to look elsewhere:
#   TK_USER=tunnel                        the relay account
#   TK_AUTHORIZED_KEYS=                   its authorized_keys (default: ~TK_USER/.ssh/...)
#   TK_SSHD=sshd                          the sshd program
#   TK_SSHD_CONFIG=/etc/ssh/sshd_config   the sshd_config that includes the block
#   TK_MTA=sendmail                       sendmail or postfix
#   TK_SENDMAIL=sendmail                  the sendmail program
#   TK_SENDMAIL_CF=/etc/mail/sendmail.cf  the sendmail.cf in use
#   TK_MAILERTABLE=/etc/mail/mailertable  the mailertable source
#   TK_MAILERTABLE_MAP=                   its map (default: TK_MAILERTABLE.db)
#   TK_TRANSPORT=/etc/postfix/transport   Postfix's transport map source
#   TK_POSTMAP=postmap                    Postfix's postmap program
#   TK_RELAY_MTA=127.0.0.1:25             the MTA asked for ETRN
#   TK_NAMED_CONF=/etc/bind/named.conf    the named.conf to check
set -u
: "${TK_USER:=tunnel}"
: "${TK_SSHD:=sshd}"
: "${TK_SSHD_CONFIG:=/etc/ssh/sshd_config}"
: "${TK_MTA:=sendmail}"
: "${TK_SENDMAIL:=sendmail}"
: "${TK_SENDMAIL_CF:=/etc/mail/sendmail.cf}"
: "${TK_MAILERTABLE:=/etc/mail/mailertable}"
: "${TK_TRANSPORT:=/etc/postfix/transport}"
: "${TK_POSTMAP:=postmap}"
: "${TK_RELAY_MTA:=127.0.0.1:25}"
: "${TK_NAMED_CONF:=/etc/bind/named.conf}"

failed=0
pass() { printf 'ok %s\n' "$1"; }
fail() { printf 'FAIL %s\n' "$1"; failed=1; }
first_line() { printf '%s\n' "$1" | sed -n '1{s/[[:cntrl:]]//g;p;}'; }
have() { command -v "$1" >/dev/null 2>&1; }

# The local addresses that something listens on, one per line, as host:port.
listening() {
    if have ss; then
        ss -Hltn | awk '{print $4}'
    else
        netstat -ltn | awk 'NR > 2 {print $4}'
    fi
}

check_listen() {  # HOST PORT
    if listening | grep -qxF -e "$1:$2" -e "[$1]:$2"; then
        pass "something listens on $1:$2 (the tunnel is up)"
    else
        fail "nothing listens on $1:$2: the tunnel is down (tunnelkeeper status) or refused"
    fi
}

# Whether file $1 was made after file $2 (a map rebuilt after its source changed).
newer() { [ -n "$(find "$1" -prune -newer "$2" 2>/dev/null)" ]; }

if [ "$(id -u)" = 0 ]; then pass "running as root"; else fail "running as root (use sudo)"; fi

# -- the SSH account ------------------------------------------------------------------
home=$(getent passwd "$TK_USER" | cut -d: -f6)
if [ -n "$home" ]; then pass "account $TK_USER exists"; else fail "account $TK_USER exists"; fi
keys=${TK_AUTHORIZED_KEYS:-$home/.ssh/authorized_keys}
if grep -qxF 'restrict,port-forwarding,permitlisten="127.0.0.1:2525",permitlisten="127.0.0.1:5353",permitopen="127.0.0.1:2525",permitopen="127.0.0.1:5353",permitopen="127.0.0.1:25",command="/bin/false" ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC+cJWqYp7JHK68hY4YrA6lDI5zIT6l5jz+OFvyKPviaKhlIVht+9+E4ee22fYYzUiWykoGHvQdoY5e7djPrBxxqkzrhU3ewnNOoaXK7jxHH6tgOnUIqt/gACzgMbx/cT3gKXURqY5M3AHM1Ayk9nBbctDpcZgAYgUv9+dKpaG6Jkql5dcyUBYLev55D3YDhmhTL4HKBr8/3gY0F8IERemnXY+0pVBPQZWM2FH1X2qCdVyKZ0OTaRT+h2Db16X23MtxhSn2r4KsnxhKZH6/6Z273LFkWaVu8dQNzecqH0uP7OpEcF/htFlGvUcmasNrcIVrpy1UqHZWc3GY1lxLW41n tunnelkeeper@mail.example.org' "$keys" 2>/dev/null; then
    pass "$keys has the kit's key line (SHA256:4EBm7j0gZ4XmIymv6mpVWaBzAamgSXBsJhMp0zWSYYE)"
else
    fail "$keys has the kit's key line (SHA256:4EBm7j0gZ4XmIymv6mpVWaBzAamgSXBsJhMp0zWSYYE): install the kit's authorized_keys"
fi

# -- sshd applies the Match block to the account --------------------------------------
connection="user=$TK_USER,host=internal,addr=127.0.0.1"
if settings=$("$TK_SSHD" -T -f "$TK_SSHD_CONFIG" -C "$connection" 2>&1); then
    for want in 'allowtcpforwarding yes' 'permitlisten 127.0.0.1:2525 127.0.0.1:5353' 'permitopen 127.0.0.1:2525 127.0.0.1:5353 127.0.0.1:25' 'gatewayports no' 'x11forwarding no' 'allowagentforwarding no' 'allowstreamlocalforwarding no' 'permittunnel no' 'permittty no' 'forcecommand /bin/false' 'authenticationmethods publickey' 'clientaliveinterval 3' 'clientalivecountmax 3'; do
        if printf '%s\n' "$settings" | grep -qixF "$want"; then
            pass "sshd -T for $TK_USER: $want"
        else
            got=$(printf '%s\n' "$settings" | grep -i "^${want%% *} " || echo unset)
            fail "sshd -T for $TK_USER: $want (it says: $got): is the Match block installed?"
        fi
    done
else
    fail "sshd -T reads $TK_SSHD_CONFIG: $(first_line "$settings")"
fi

if [ "$TK_MTA" = postfix ]; then
    # -- Postfix routes the domains down the tunnel ---------------------------------------
    for pair in 'example.org smtp:[127.0.0.1]:2525' '.example.org smtp:[127.0.0.1]:2525' 'example.com smtp:[127.0.0.1]:2525' '.example.com smtp:[127.0.0.1]:2525'; do
        key=${pair%% *} want=${pair#* }
        got=$("$TK_POSTMAP" -q "$key" "hash:$TK_TRANSPORT" 2>&1)
        if [ "$got" = "$want" ]; then
            pass "postmap -q $key: $want"
        else
            fail "postmap -q $key: $want, not: $(first_line "${got:-nothing}")"
        fi
    done
    if newer "$TK_TRANSPORT.db" "$TK_TRANSPORT"; then
        pass "$TK_TRANSPORT.db is newer than $TK_TRANSPORT"
    else
        fail "$TK_TRANSPORT.db is newer than $TK_TRANSPORT: postmap $TK_TRANSPORT"
    fi
else
    # -- sendmail routes the domains to the tunnel mailer ---------------------------------
    if have "$TK_SENDMAIL"; then
        for pair in 'postmaster@example.org tk2525' 'postmaster@sub.example.org tk2525' 'postmaster@example.com tk2525' 'postmaster@sub.example.com tk2525'; do
            address=${pair%% *} mailer=${pair#* }
            route=$(printf '/parse %s\n' "$address" | "$TK_SENDMAIL" -C "$TK_SENDMAIL_CF" -bt 2>&1 |
                grep '^mailer ' | tail -n 1)
            case "$route" in
            "mailer $mailer, "*) pass "sendmail -bt: $address goes to mailer $mailer" ;;
            *) fail "sendmail -bt: $address goes to mailer $mailer, not: ${route:-no route}" ;;
            esac
        done
    else
        fail "sendmail is installed ($TK_SENDMAIL)"
    fi
    map=${TK_MAILERTABLE_MAP:-$TK_MAILERTABLE.db}
    rebuild="makemap hash $TK_MAILERTABLE < $TK_MAILERTABLE"
    if [ ! -e "$map" ]; then
        fail "$map exists: $rebuild"
    elif newer "$map" "$TK_MAILERTABLE"; then
        pass "$map is newer than $TK_MAILERTABLE"
    else
        fail "$map is newer than $TK_MAILERTABLE: $rebuild"
    fi
fi

# -- the MTA answers ETRN, so held mail goes out as soon as the tunnel is whole again -
# (Each ETRN starts a delivery attempt for that domain's queued mail, as tunnelkeeper's do.)
etrn() {  # HOST PORT ARGUMENT: the MTA's last reply, to ETRN ARGUMENT (or what stopped it)
    perl -MIO::Socket::INET -e '
        my ($host, $port, $arg) = @ARGV;
        $SIG{ALRM} = sub { print "no answer within 20s\n"; exit 0 };
        alarm 20;
        my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => "tcp")
            or do { print "cannot connect: $!\n"; exit 0 };
        sub reply {
            while (defined(my $line = <$s>)) { return $line if $line =~ /^\d{3}(?: |\r?$)/ }
            return "the connection closed\n";
        }
        my $r = reply();
        if ($r =~ /^220/) { print $s "EHLO check-relay.tunnelkeeper\r\n"; $r = reply() }
        if ($r =~ /^250/) { print $s "ETRN $arg\r\n"; $r = reply(); print $s "QUIT\r\n" }
        $r =~ s/[[:cntrl:]]//g;
        print substr($r, 0, 200), "\n";
    ' "$1" "$2" "$3"
}
mta_host=${TK_RELAY_MTA%:*} mta_port=${TK_RELAY_MTA##*:}
mta_host=${mta_host#[} mta_host=${mta_host%]}
if [ "$TK_MTA" = postfix ]; then
    why="list the domains in fast_flush_domains; smtpd_etrn_restrictions must permit 127.0.0.1"
else
    why="no noetrn in PrivacyOptions, no E in the daemon's Modifiers, no check_etrn refusing it"
fi
if have perl; then
    for arg in @example.org @example.com; do
        reply=$(etrn "$mta_host" "$mta_port" "$arg")
        case "$reply" in
        25[0-3]" "*) pass "the MTA on $TK_RELAY_MTA answers ETRN $arg: $reply" ;;
        *) fail "the MTA on $TK_RELAY_MTA answers ETRN $arg with 250, not: $reply ($why)" ;;
        esac
    done
else
    fail "perl is installed (to ask the MTA on $TK_RELAY_MTA for ETRN)"
fi

# -- named takes the secondary zones --------------------------------------------------
if out=$(named-checkconf "$TK_NAMED_CONF" 2>&1); then
    pass "named-checkconf accepts $TK_NAMED_CONF"
    loaded=$(named-checkconf -p "$TK_NAMED_CONF" 2>/dev/null)
    for zone in example.org example.com; do
        if printf '%s\n' "$loaded" | grep -qF "zone \"$zone\""; then
            pass "named.conf has zone $zone"
        else
            fail "named.conf has zone $zone: include the kit's named.conf.tunnelkeeper there"
        fi
    done
else
    fail "named-checkconf accepts $TK_NAMED_CONF: $(first_line "$out")"
fi

# -- the tunnel's listeners -----------------------------------------------------------
check_listen 127.0.0.1 2525
check_listen 127.0.0.1 5353

exit "$failed"
