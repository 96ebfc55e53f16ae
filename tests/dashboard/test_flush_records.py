"""Where an ETRN's answer shows: a history event (and `history`'s flushes), the dashboard's
recent events, the Prometheus counter by result, and `last_flush` in status --json."""

from __future__ import annotations

import io
import json
import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console

from tests.support.snapshots import NOW, SMTP_OK, healthy
from tunnelkeeper.cli import history as history_cli
from tunnelkeeper.dashboard.events import KINDS, EventsPanel, describe
from tunnelkeeper.history import report
from tunnelkeeper.history.service import Recorder
from tunnelkeeper.history.store import Event
from tunnelkeeper.services.metrics import render
from tunnelkeeper.state import FlushResult, SupervisorStatus

ACCEPTED = FlushResult(at=NOW, ok=True, reply="250 2.0.0 Queuing for node @example.org started")
REFUSED = FlushResult(
    at=NOW + timedelta(seconds=30), ok=False, reply="502 5.7.0 Sorry, we do not allow this"
)


def with_flush(flush: FlushResult | None, accepted: int = 0, refused: int = 0) -> SupervisorStatus:
    status = healthy()
    tunnel = status.tunnels[0]
    forwards = tuple(
        replace(f, last_flush=flush, etrn_accepted=accepted, etrn_refused=refused)
        if f.name == SMTP_OK.name
        else f
        for f in tunnel.forwards
    )
    return replace(status, tunnels=(replace(tunnel, forwards=forwards), *status.tunnels[1:]))


def test_each_new_answer_is_one_history_event() -> None:
    recorder = Recorder()
    seen: list[Event] = []
    for at, status in enumerate(
        [
            with_flush(None),
            with_flush(ACCEPTED, accepted=1),
            with_flush(ACCEPTED, accepted=1),
            with_flush(REFUSED, accepted=1, refused=1),
        ]
    ):
        seen += [
            e for e in recorder.observe(status, float(at), lambda _: True) if e.kind == "flush"
        ]
    tunnel = healthy().tunnels[0].name
    assert [(e.at, e.tunnel, e.forward, e.state, e.reason) for e in seen] == [
        (1.0, tunnel, "smtp", "accepted", ACCEPTED.reply),
        (3.0, tunnel, "smtp", "failed", REFUSED.reply),
    ]


def test_history_lists_the_flushes_of_its_span() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, session INTEGER, at REAL, kind TEXT, "
        "tunnel TEXT, forward TEXT, state TEXT, error_kind TEXT, reason TEXT)"
    )
    rows = [
        (100.0, "flush", "relay1", "smtp", "accepted", ACCEPTED.reply),
        (200.0, "flush", "relay2", "smtp", "failed", REFUSED.reply),
        (300.0, "probe", "relay1", "smtp", "ok", None),
        (900.0, "flush", "relay1", "smtp", "accepted", ACCEPTED.reply),
    ]
    conn.executemany(
        "INSERT INTO events (session, at, kind, tunnel, forward, state, reason) "
        "VALUES (1, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    flushes = report.flushes(conn, 50.0, 500.0)
    assert [(f["tunnel"], f["ok"], f["reply"]) for f in flushes] == [
        ("relay1", True, ACCEPTED.reply),
        ("relay2", False, REFUSED.reply),
    ]
    assert [f["tunnel"] for f in report.flushes(conn, 0.0, 1000.0, "relay1")] == ["relay1"] * 2


def test_the_dashboard_says_a_flush_in_its_recent_events() -> None:
    assert "flush" in KINDS
    events = [
        Event(NOW.timestamp(), "flush", "relay1", "smtp", "accepted", reason=ACCEPTED.reply),
        Event(NOW.timestamp() + 1, "flush", "relay1", "smtp", "failed", reason="502 \x1b[2Jno"),
    ]
    lines = describe(events)
    assert [(line.who, line.what) for line in lines] == [
        ("relay1/smtp", "held mail flushed (ETRN)"),
        ("relay1/smtp", "ETRN not accepted"),
    ]
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(
        EventsPanel(lines, now=NOW, tz=NOW.tzinfo)
    )
    text = out.getvalue()
    assert "held mail flushed (ETRN): 250 2.0.0 Queuing for node @example.org started" in text
    assert "\x1b" not in text  # the relay's words, escaped


def test_prometheus_counts_etrns_by_result() -> None:
    text = render(with_flush(REFUSED, accepted=3, refused=1)).decode()
    tunnel = healthy().tunnels[0].name
    assert "# TYPE tunnelkeeper_etrn_total counter" in text
    for result, count in (("accepted", 3), ("refused", 1), ("unreachable", 0)):
        labels = f'forward="smtp",result="{result}",service="smtp",tunnel="{tunnel}"'
        assert f"tunnelkeeper_etrn_total{{{labels}}} {count}.0" in text
    assert 'tunnelkeeper_etrn_total{forward="dns"' not in text  # smtp forwards only


def test_last_flush_in_status_json_and_back() -> None:
    status = with_flush(ACCEPTED, accepted=1)
    doc = json.loads(json.dumps(status.to_json(NOW)))
    smtp = next(f for f in doc["tunnels"][0]["forwards"] if f["name"] == "smtp")
    assert smtp["last_flush"] == {
        "at": NOW.isoformat(),
        "ok": True,
        "reply": "250 2.0.0 Queuing for node @example.org started",
    }
    assert smtp["etrn_accepted"] == 1 and smtp["etrn_refused"] == 0
    back = SupervisorStatus.from_json(doc)
    assert next(f for f in back.forwards if f.name == "smtp").last_flush == ACCEPTED


def test_history_prints_each_flush(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = {
        "since": "2026-11-24T18:00:00+00:00",
        "until": "2026-11-25T18:00:00+00:00",
        "outages": [],
        "availability": [],
        "flushes": [
            {
                "at": "2026-11-24T20:00:00+00:00",
                "tunnel": "relay1",
                "forward": "smtp",
                "ok": False,
                "reply": "502 5.7.0 no\x1b[2J",
            }
        ],
    }
    history_cli._print(doc, tmp_path / "history.db")
    out = capsys.readouterr().out
    assert "relay1/smtp: ETRN FAILED: 502 5.7.0 no" in out and "\x1b" not in out


def test_two_flushes_in_the_same_second_are_two_events() -> None:
    recorder = Recorder()
    kinds = []
    for at, status in enumerate(
        [with_flush(ACCEPTED, accepted=1), with_flush(ACCEPTED, accepted=2)]
    ):
        kinds += [
            e.state
            for e in recorder.observe(status, float(at), lambda _: True)
            if e.kind == "flush"
        ]
    assert kinds == ["accepted", "accepted"]
