"""The status schema as a floor: every field of `status --json`, its type and its enumeration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.support.control import ThreadedControlServer
from tests.support.snapshots import NOW, SMTP_OK, SNAPSHOTS, mixed
from tunnelkeeper.cli import main
from tunnelkeeper.control import fetch_status
from tunnelkeeper.errors import ERROR_KINDS, ControlError
from tunnelkeeper.state import SupervisorStatus

TUNNEL_STATES = {"connecting", "up", "backoff", "stopped"}
FORWARD_STATES = {"up", "pending", "refused", "down"}
SPEC_ERROR_KINDS = {
    "host-key-mismatch", "host-key-unknown", "host-key-revoked", "auth-failed",
    "connect-refused", "timeout", "keepalive-timeout", "disconnected", "forward-refused", "dns",
    "proxy", "config", "internal",
}  # fmt: skip
ISO = str  # an ISO 8601 timestamp with its offset; checked by _is_iso


def _is_iso(value: object) -> bool:
    from datetime import datetime

    return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None


def check_schema(doc: dict[str, Any]) -> None:
    """Fail unless `doc` has every field the schema names, with the right types and values."""
    assert {"supervisor", "tunnels"} <= doc.keys()
    sup = doc["supervisor"]
    assert {"pid", "started", "config"} <= sup.keys()
    assert isinstance(sup["pid"], int) and not isinstance(sup["pid"], bool)
    assert _is_iso(sup["started"]) and isinstance(sup["config"], str)
    assert isinstance(doc["tunnels"], list)
    for tunnel in doc["tunnels"]:
        assert {
            "name", "relay", "state", "since", "connects", "next_retry_in", "error_kind",
            "last_error", "forwards", "local", "relay_version", "internal_errors",
        } <= tunnel.keys()  # fmt: skip
        assert tunnel["relay_version"] is None or isinstance(tunnel["relay_version"], str)
        assert isinstance(tunnel["internal_errors"], int) and tunnel["internal_errors"] >= 0
        assert isinstance(tunnel["local"], list)
        assert isinstance(tunnel["name"], str) and isinstance(tunnel["relay"], str)
        assert tunnel["state"] in TUNNEL_STATES
        assert tunnel["since"] is None or _is_iso(tunnel["since"])
        assert isinstance(tunnel["connects"], int)
        assert tunnel["next_retry_in"] is None or isinstance(tunnel["next_retry_in"], int | float)
        assert tunnel["error_kind"] is None or tunnel["error_kind"] in SPEC_ERROR_KINDS
        assert tunnel["last_error"] is None or isinstance(tunnel["last_error"], str)
        assert isinstance(tunnel["forwards"], list)
        for fwd in tunnel["forwards"] + tunnel["local"]:
            assert {
                "name", "service", "listen", "target", "state", "connections_active",
                "connections_total", "bytes_in", "bytes_out", "probe", "availability_24h",
            } <= fwd.keys()  # fmt: skip
            avail = fwd["availability_24h"]
            assert avail is None or (isinstance(avail, int | float) and 0 <= avail <= 100)
            for key in ("name", "listen", "target"):
                assert isinstance(fwd[key], str)
            assert fwd["service"] in {"smtp", "dns", "tcp"}
            assert fwd["state"] in FORWARD_STATES
            for key in ("connections_active", "connections_total", "bytes_in", "bytes_out"):
                assert isinstance(fwd[key], int) and fwd[key] >= 0
            probe = fwd["probe"]
            if probe is not None:
                assert {"ok", "latency_ms", "at", "detail"} <= probe.keys()
                assert isinstance(probe["ok"], bool)
                assert probe["latency_ms"] is None or isinstance(probe["latency_ms"], int | float)
                assert _is_iso(probe["at"]) and isinstance(probe["detail"], str)


def test_error_kinds_are_the_spec_ones() -> None:
    assert set(ERROR_KINDS) >= SPEC_ERROR_KINDS


@pytest.mark.parametrize("snapshot", sorted(SNAPSHOTS))
def test_snapshot_json_meets_the_spec(snapshot: str) -> None:
    doc = json.loads(json.dumps(SNAPSHOTS[snapshot]().to_json(NOW)))
    check_schema(doc)


def test_json_round_trips() -> None:
    status = mixed()
    doc = status.to_json(NOW)
    again = SupervisorStatus.from_json(doc)
    assert again.to_json(NOW)["tunnels"][0] == doc["tunnels"][0]
    assert doc["tunnels"][1]["next_retry_in"] == 12.3
    assert again.exit_code() == status.exit_code() == 1


def _one_place(latency: float | None) -> float | None:
    return None if latency is None else round(latency, 1)


@pytest.mark.parametrize("snapshot", sorted(SNAPSHOTS))
def test_every_field_comes_back(snapshot: str) -> None:
    """from_json(to_json()) writes the same JSON again, locals included (the retry time is
    relative to the clock, so it is left out; latencies are rounded in the JSON)."""
    status = SNAPSHOTS[snapshot]()
    tunnels = tuple(replace(t, next_retry_at=None) for t in status.tunnels)
    if tunnels:
        local = replace(SMTP_OK, name="out", direction="local", since=NOW)
        tunnels = (replace(tunnels[0], forwards=(*tunnels[0].forwards, local)), *tunnels[1:])
    status = replace(status, tunnels=tunnels, internal_errors=2)
    doc = json.loads(json.dumps(status.to_json(NOW)))
    again = SupervisorStatus.from_json(doc)
    assert again.to_json(NOW) == doc
    assert again.internal_errors == 2 and again.forwards == tuple(
        replace(f, probe=f.probe and replace(f.probe, latency_ms=_one_place(f.probe.latency_ms)))
        for f in status.forwards
    )
    if tunnels:
        assert [f["name"] for f in doc["tunnels"][0]["local"]] == ["out"]
        assert "direction" not in doc["tunnels"][0]["local"][0]


_SUP = {"pid": 1, "started": "2026-01-01T00:00:00+00:00", "config": "c"}
_FWD = {"name": "a", "service": "tcp", "listen": "l", "target": "t", "state": "up"}


def _tunnel(**more: Any) -> dict[str, Any]:
    return {"supervisor": _SUP, "tunnels": [{"name": "t", "relay": "r", "state": "up", **more}]}


@pytest.mark.parametrize(
    "doc",
    [
        [],
        5,
        None,
        {"supervisor": []},
        {"supervisor": _SUP | {"started": None}},
        {"supervisor": _SUP | {"started": 5}},
        {"supervisor": _SUP | {"started": "2026-01-01T00:00:00"}},  # no offset
        {"supervisor": _SUP | {"pid": "12"}},
        {"supervisor": _SUP, "tunnels": {"a": 1}},
        {"supervisor": _SUP, "tunnels": [[]]},
        _tunnel(state="sideways"),
        _tunnel(since=5),
        _tunnel(next_retry_in="x"),
        _tunnel(next_retry_in=1e300),
        _tunnel(forwards=[None]),
        _tunnel(local=["abc"]),
        _tunnel(forwards=[_FWD | {"probe": "x"}]),
        _tunnel(forwards=[_FWD | {"bytes_in": "many"}]),
    ],
    ids=repr,
)
def test_a_malformed_reply_is_refused_while_read(doc: Any) -> None:
    """Anything that is not a status fails in from_json, with an error the control client
    turns into "not a status" — never later, in the table or the dashboard."""
    with pytest.raises((TypeError, ValueError, KeyError, OverflowError)):
        SupervisorStatus.from_json(doc)


@pytest.mark.parametrize("reply", [b"[]\n", b'{"supervisor": {"pid": "1"}}\n', b"5\n"])
async def test_the_control_client_says_not_a_status(short_tmp: Path, reply: bytes) -> None:
    """A socket that answers something else is a ControlError (`status` exits 3), never a
    traceback."""
    sock = short_tmp / "odd.sock"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, str(sock))
    async with server:
        with pytest.raises(ControlError, match="not a status"):
            await fetch_status(sock, timeout=5)


def test_an_older_probe_without_latency_or_detail_still_reads() -> None:
    doc = _tunnel(forwards=[_FWD | {"probe": {"ok": True, "at": "2026-01-01T00:00:00+00:00"}}])
    probe = SupervisorStatus.from_json(doc).forwards[0].probe
    assert probe is not None and probe.latency_ms is None and probe.detail == ""


def test_spec_example_parses() -> None:
    example = json.loads(
        """{"supervisor": {"pid": 4242, "started": "2026-11-24T18:00:00+00:00",
        "config": "/path/tunnelkeeper.toml"},
        "tunnels": [{"name": "relay1", "relay": "tunnel@relay.example.net:22", "state": "up",
        "since": "2026-11-24T18:00:01+00:00", "connects": 1, "next_retry_in": null,
        "error_kind": null, "last_error": null,
        "forwards": [{"name": "smtp", "service": "smtp", "listen": "127.0.0.1:2525",
        "target": "127.0.0.1:25", "state": "up", "connections_active": 0,
        "connections_total": 3, "bytes_in": 1234, "bytes_out": 567,
        "probe": {"ok": true, "latency_ms": 4.2, "at": "2026-11-24T18:00:31+00:00",
        "detail": "220 mail.example.org ESMTP"}}]}]}"""
    )
    # The example predates relay_version, internal_errors, local and availability_24h: it
    # must still read, and what we write back carries every field.
    status = SupervisorStatus.from_json(example)
    assert status.exit_code() == 0
    check_schema(status.to_json())


def test_status_json_through_the_cli(
    control_server: ThreadedControlServer,
    config_for: Callable[[Path], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    control_server.status = mixed()
    cfg = config_for(control_server.path)
    assert main(["status", "-c", str(cfg), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    check_schema(doc)
    assert doc["supervisor"]["pid"] == 4242
    assert [t["name"] for t in doc["tunnels"]] == ["relay1", "relay2"]
    assert doc["tunnels"][0]["forwards"][1]["probe"]["via"] == "local"
