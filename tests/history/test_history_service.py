"""The history service inside a real supervisor (fake relay connections): outages recorded,
availability_24h in status --json, `history` answering while the supervisor runs and after."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_relay import FakeRelay, supervised
from tests.support.polling import until
from tunnelkeeper import config
from tunnelkeeper.cli import main
from tunnelkeeper.control import fetch_status
from tunnelkeeper.errors import ConnectRefused, Disconnected
from tunnelkeeper.history import service as history
from tunnelkeeper.publisher import ServiceContext
from tunnelkeeper.supervisor import Shutdown


def make_config(folder: Path) -> config.Config:
    raw: dict[str, Any] = {
        "supervisor": {
            "control_socket": str(folder / "c.sock"),
            "shutdown_grace": 0.2,
            "history_path": "state/history.db",
        },
        "tunnel": [
            {
                "name": "relay1",
                "host": "relay.example.net",
                "user": "t",
                "backoff_initial": 0.3,
                "backoff_max": 0.6,
                "probe_interval": 0,
                "forward": [
                    {"name": "smtp", "listen": 2525, "target": 25},
                    {"name": "dns", "listen": 5353, "target": 53},
                ],
            }
        ],
    }
    path = folder / "tunnelkeeper.toml"
    lines = [
        "[supervisor]",
        *(f"{k} = {json.dumps(v)}" for k, v in raw["supervisor"].items()),
        "[[tunnel]]",
    ]
    tunnel = raw["tunnel"][0]
    lines += [f"{k} = {json.dumps(v)}" for k, v in tunnel.items() if k != "forward"]
    for fwd in tunnel["forward"]:
        lines += ["[[tunnel.forward]]", *(f"{k} = {json.dumps(v)}" for k, v in fwd.items())]
    path.write_text("\n".join(lines) + "\n")
    return config.load(path)


async def run_history(*args: str) -> tuple[int, dict[str, Any]]:
    def call() -> tuple[int, dict[str, Any]]:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["history", "--json", *args])
        return code, json.loads(out.getvalue()) if code == 0 else {}

    return await asyncio.to_thread(call)


async def test_outages_reach_the_database_and_status(short_tmp: Path) -> None:
    cfg = make_config(short_tmp)
    relay = FakeRelay([ConnectRefused("127.0.0.1:22: connection refused"), "ok", "ok"])

    async def service(ctx: ServiceContext) -> None:
        await history.record(ctx, poll=0.05, refresh=0.2)

    sup = supervised(cfg, relay, services=[service])
    shutdown = Shutdown()
    task = asyncio.create_task(sup.run(shutdown))
    try:
        await until(lambda: relay.live and sup.published().forwards[0].state == "up")
        await asyncio.sleep(0.3)
        relay.live[0].lose(Disconnected("the relay went away"))
        await until(lambda: len(relay.live) == 2 and sup.published().forwards[0].state == "up")
        await until(lambda: sup.published().forwards[0].availability_24h is not None)
        # The control socket answers with the same numbers (status --json).
        status = await fetch_status(cfg.control_socket)
        values = [f.availability_24h for f in status.forwards]
        assert all(v is not None and 0 < v < 100 for v in values), values
        doc = status.to_json()
        assert doc["tunnels"][0]["forwards"][0]["availability_24h"] == values[0]
        # `history` reads the database while the supervisor writes it.
        code, live = await run_history("-c", str(cfg.path))
        assert code == 0
        assert len(live["outages"]) == 4
    finally:
        shutdown.request()
        await asyncio.wait_for(task, 10)
    code, doc = await run_history("-c", str(cfg.path), "--tunnel", "relay1")
    assert code == 0
    kinds = [(o["forward"], o["error_kind"]) for o in doc["outages"]]
    assert sorted(kinds) == [
        ("dns", "connect-refused"),
        ("dns", "disconnected"),
        ("smtp", "connect-refused"),
        ("smtp", "disconnected"),
    ]
    refused = next(o for o in doc["outages"] if o["error_kind"] == "connect-refused")
    assert refused["reason"] == "127.0.0.1:22: connection refused"
    assert all(o["end"] is not None and 0 < o["duration_s"] < 5 for o in doc["outages"])
    rows = {row["forward"]: row for row in doc["availability"]}
    assert set(rows) == {"smtp", "dns"}
    assert 0 < rows["smtp"]["24h"] < 100
    assert 0 < rows["smtp"]["recorded_s"]["24h"] < 30
    code, other = await run_history("-c", str(cfg.path), "--tunnel", "elsewhere")
    assert code == 2 and other == {}  # neither configured nor recorded: a usage error
    assert sup.publisher.amenders == ()  # the service took its amendment away when it stopped


async def test_an_unusable_database_turns_history_off_not_the_supervisor(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(short_tmp)
    (short_tmp / "state").write_text("a file where the folder should be")
    relay = FakeRelay(["ok"])
    sup = supervised(cfg, relay, services=[history.record])
    shutdown = Shutdown()
    task = asyncio.create_task(sup.run(shutdown))
    await until(lambda: relay.live and sup.published().forwards[0].state == "up")
    shutdown.request()
    await asyncio.wait_for(task, 10)
    assert "history off" in caplog.text
