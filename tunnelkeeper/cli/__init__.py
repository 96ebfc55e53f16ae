"""Command line: one module per verb, each a thin shell over the library.

Each verb module has `register(subparsers) -> None`, which adds its parser and sets `func` to a
`run(args) -> int`. Only the verb being run is imported, so `--help` and the generators start
without loading asyncssh or rich.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import ChooseTunnel, ConfigError, TunnelkeeperError
from . import early

if TYPE_CHECKING:
    from ..config import Config

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNKNOWN = 0, 1, 2, 3

# The two groups help shows, with each verb's one-line help.
GROUPS: dict[str, dict[str, str]] = {
    "Supervisor": {
        "run": "run the supervisor in the foreground (dashboard on a terminal)",
        "status": "ask the running supervisor how its tunnels are",
        "history": "outages and availability per forward, from the history database",
        "check": "one-shot: connect, verify, authenticate, try each forward and probe",
        "flush": "ask the relays' MTAs to deliver the mail they hold now (SMTP ETRN)",
        "demo": "everything on this machine: embedded relay, mail flowing, recovery",
        "keygen": "make the RSA key pair for the relay account",
    },
    "Relay configuration": {
        "mailertable": "sendmail mailertable lines for the smtp forwards' domains",
        "sendmail-mailer": "the sendmail mailer(s) those lines name (cf M lines or --m4)",
        "transport": "Postfix transport(5) lines for the same domains",
        "named-conf": "BIND secondary-zone stanzas pulling through the dns forwards",
        "mx-records": "zone-file MX records: internal host at 0, relay at 10",
        "smarthost": "the internal MTA's lines that send mail out through an smtp local",
        "authorized-keys": "the relay account's locked-down authorized_keys line",
        "sshd-config": "a Match User block for the relay's sshd_config",
        "relay-kit": "all of the above as files, with a README for the relay admin",
        "internal-kit": "the internal servers' lines that keep the tunnel from being trusted",
    },
}
VERBS = {verb: help_ for group in GROUPS.values() for verb, help_ in group.items()}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `verb`'s module is imported to add its full arguments."""
    epilog = "\n".join(
        f"{title}:\n" + "\n".join(f"  {v:<17} {h}" for v, h in verbs.items())
        for title, verbs in GROUPS.items()
    )
    parser = argparse.ArgumentParser(
        prog="tunnelkeeper",
        description="Keeps reverse SSH tunnels for mail and DNS open through a relay, "
        "and writes the relay admin's configuration.",
        epilog=epilog + "\n\n'tunnelkeeper COMMAND --help' describes a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tunnelkeeper {__version__}")
    # No help= per verb: argparse then lists none itself, and the epilog shows the groups.
    subparsers = parser.add_subparsers(metavar="COMMAND", dest="command")
    for name in VERBS:
        if name == verb:
            module = importlib.import_module(f".{name.replace('-', '_')}", __name__)
            module.register(subparsers)
            # So that an unknown flag is reported with this command's usage, not the top's.
            subparsers.choices[name].set_defaults(command_parser=subparsers.choices[name])
        else:
            subparsers.add_parser(name)
    return parser


def path_text(text: str) -> str:
    """An argument that names a file or folder: not empty (that would quietly mean "here")."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names nothing")
    return text


def seconds(text: str, at_most: float | None = None) -> float:
    """A positive, finite number of seconds (no more than `at_most`, when given). For a bound,
    pass `functools.partial(seconds, at_most=600)` as the argument's type."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if at_most is not None and not 0 < value <= at_most:
        raise argparse.ArgumentTypeError(f"give seconds between 0 and {at_most:g}")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


def verb_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Callable[[argparse.Namespace], int],
    description: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """The parser of a verb that reads the configuration, -c/--config first as every such
    verb has it, and `run` as what it does. An epilog is shown as written."""
    parser = subparsers.add_parser(
        name,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter if epilog else argparse.HelpFormatter,
    )
    add_config_option(parser)
    parser.set_defaults(func=run)
    return parser


def add_dashboard_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live dashboard (default: on when stdout is a terminal)",
    )


def load_config(args: argparse.Namespace) -> Config:
    """The configuration -c/--config names (or the one found where it is looked for).
    Raises ConfigError."""
    from ..config import find_config, load

    return load(find_config(args.config))


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        type=path_text,
        help="configuration file (default: $TUNNELKEEPER_CONFIG, ./tunnelkeeper.toml, "
        "$XDG_CONFIG_HOME/tunnelkeeper/config.toml)",
    )


def check_tunnel_files(cfg: Config) -> None:
    """Before connecting (`run`, `check`): the keys readable and sound, and every file that
    makes it act owned and writable as sshd's StrictModes would want; say so when that check
    is turned off."""
    from .. import filetrust, ssh
    from ..config import vetting

    vetting.check_credential_names(cfg)  # before preflight reads a secret
    ssh.preflight(cfg.tunnel)
    vetting.check_tunnel_files(cfg)
    if not filetrust.strict_modes():
        print(
            f"tunnelkeeper: {filetrust.STRICT_MODES_ENV}=no: files other users may change "
            "are trusted",
            file=sys.stderr,
        )


def _verb_in(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in VERBS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _verb_in(argv) == "run":
        early.hold()
    try:
        code = _main(argv)
        sys.stdout.flush()  # a full disk under `mailertable > FILE` must be said here
        return code
    except OSError as exc:
        # Writing the output failed (the commands report their own files' errors, by name).
        if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
            raise
        _output_to_devnull()
        if isinstance(exc, BrokenPipeError):
            return EXIT_OK  # `tunnelkeeper mailertable | head` is not an error
        print(f"tunnelkeeper: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        early.release()


_OUTPUT_ERRNOS = {errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def _output_to_devnull() -> None:
    """Point standard output at /dev/null, so that Python's own flush at exit does not fail
    a second time."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _main(argv: list[str]) -> int:
    parser = build_parser(_verb_in(argv))
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            usage = getattr(args, "command_parser", parser)
            usage.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        code = int(exc.code or 0)
        # status speaks the monitoring-plugin language: a usage error is UNKNOWN (3).
        return EXIT_UNKNOWN if code == EXIT_USAGE and _verb_in(argv) == "status" else code
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except ChooseTunnel as exc:
        print(f"tunnelkeeper: {exc} (--tunnel NAME)", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"tunnelkeeper: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TunnelkeeperError as exc:
        print(f"tunnelkeeper: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
