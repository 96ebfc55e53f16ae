"""Finding and reading the configuration file: `load(path)` and its errors."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import filetrust
from ..errors import ConfigError
from .models import Config, Defaults
from .values import CONFIG_NAME, control_character


def find_config(
    explicit: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path:
    """The config path, first found of: -c, $TUNNELKEEPER_CONFIG, ./tunnelkeeper.toml, XDG.

    Raises ConfigError when none of them exists.
    """
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("TUNNELKEEPER_CONFIG"):
        return Path(env["TUNNELKEEPER_CONFIG"])
    local = (cwd or Path.cwd()) / CONFIG_NAME
    if local.exists():
        return local
    xdg = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    candidate = xdg / "tunnelkeeper" / "config.toml"
    if candidate.exists():
        return candidate
    raise ConfigError(
        f"no configuration found: give -c PATH, set TUNNELKEEPER_CONFIG, or create "
        f"./{CONFIG_NAME} or {candidate}"
    )


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the TOML file at `path`, refusing a file another user could change
    (it names commands to run; see filetrust).

    Raises ConfigError naming the file, the key path and what is wrong.
    """
    file = Path(path)
    filetrust.check_file(file, "configuration")
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(file)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(file)) from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(
            "not valid TOML: arrays or tables nested too deeply", path=str(file)
        ) from None
    return from_dict(raw, file)


def from_dict(raw: Mapping[str, Any], file: Path) -> Config:
    """Validate an already parsed document as if read from `file`."""
    base = file.resolve().parent
    if "path" in raw:  # Config.path is where the file was read from; it is no setting
        raise ConfigError("unknown key", path=str(file), key="path")
    try:
        defaults = Defaults.model_validate(raw.get("defaults", {}))
    except ValidationError as exc:
        raise _config_error(exc, str(file), prefix=("defaults",)) from None
    # The parsed values themselves (a hop chain, a proxy, an address), not a dump of them,
    # under the names the file uses (`from`), so that a tunnel's own value replaces them.
    inherited = {
        Defaults.model_fields[key].alias or key: getattr(defaults, key)
        for key in defaults.model_fields_set
    }
    data: dict[str, Any] = {k: v for k, v in raw.items()}
    tunnels = raw.get("tunnel")
    if isinstance(tunnels, list):
        data["tunnel"] = [{**inherited, **t} if isinstance(t, dict) else t for t in tunnels]
    try:
        config = Config.model_validate({**data, "path": file.resolve()})
    except ValidationError as exc:
        raise _config_error(exc, str(file)) from None
    return _resolve_paths(config, base)


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    def resolve_secret(p: Path | None) -> Path | None:
        # A bare name is a systemd credential, found at use under $CREDENTIALS_DIRECTORY.
        return p if p is None or filetrust.is_credential_name(p) else resolve(p)

    tunnels = tuple(
        t.model_copy(
            update={
                "identity": resolve(t.identity),
                "known_hosts": resolve(t.known_hosts),
                "certificate": None if t.certificate is None else resolve(t.certificate),
                "passphrase_file": resolve_secret(t.passphrase_file),
                "proxy_auth_file": resolve_secret(t.proxy_auth_file),
            }
        )
        for t in config.tunnel
    )
    sup = config.supervisor
    paths = ("control_socket", "history_path", "metrics_textfile")
    sup = sup.model_copy(
        update={k: resolve(getattr(sup, k)) for k in paths if getattr(sup, k) is not None}
    )
    return config.model_copy(update={"tunnel": tunnels, "supervisor": sup})


def _config_error(exc: ValidationError, file: str, prefix: tuple[str, ...] = ()) -> ConfigError:
    lines = []
    first_key = None
    errors = exc.errors(include_url=False)
    deeper = {tuple(e["loc"][:n]) for e in errors for n in range(len(e["loc"]))}
    for err in errors:
        if err["type"] == "too_short" and tuple(err["loc"]) in deeper:
            continue  # a list whose items failed also reports itself as short
        key = _key_path(prefix + tuple(err["loc"]))
        if first_key is None:
            first_key = key
        lines.append(f"{key}: {_in_toml_words(err)}" if key else _in_toml_words(err))
    error = ConfigError("\n  ".join(lines), path=file)
    error.key = first_key
    return error


# What pydantic says in Python's words, said in the file's (TOML's) words.
_TOML_WORDS = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "tuple_type": "must be an array",
    "list_type": "must be an array",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "path_type": "must be a path (a string)",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
}
MESSAGE_MAX = 300  # a bad value is quoted in the message; a huge one is not repeated whole


def _in_toml_words(err: Any) -> str:
    message = _TOML_WORDS.get(err["type"])
    if message is None and err["type"] == "too_short":
        least = err.get("ctx", {}).get("min_length", 1)
        message = "must not be empty" if least == 1 else f"must have at least {least} entries"
    if message is None:
        message = str(err["msg"]).removeprefix("Value error, ")
        message = message.replace("Input should be", "must be")
    if len(message) > MESSAGE_MAX:
        message = message[: MESSAGE_MAX - 1] + "…"
    return message


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "path":
            continue
        else:
            text = str(part)
            if control_character(text) is not None:  # an unknown key may hold anything
                text = repr(text)
            out += f".{text}" if out else text
    return out.replace("from_", "from")
