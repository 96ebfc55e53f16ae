"""The history database: outage rules over snapshots, the report, the writer thread, kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.polling import until_blocking
from tests.support.snapshots import DNS_OK, NOW, RELAY1_UP, SMTP_OK, STARTED, with_probe
from tunnelkeeper.cli import main
from tunnelkeeper.history import report as history_report
from tunnelkeeper.history.service import Recorder
from tunnelkeeper.history.store import SCHEMA_VERSION, Event, HistoryError, Writer, connect
from tunnelkeeper.state import (
    ForwardState,
    ProbeResult,
    SupervisorStatus,
    TunnelState,
    TunnelStatus,
)

DAY = 86_400.0
T0 = NOW.timestamp()


def snap(*tunnels: TunnelStatus) -> SupervisorStatus:
    return SupervisorStatus(pid=1, started=STARTED, config="/x.toml", tunnels=tunnels)


def relay(state: TunnelState = "up", **forward_states: ForwardState) -> TunnelStatus:
    """relay1 with smtp and dns; keyword arguments set a forward's state."""
    forwards = tuple(
        replace(f, state=forward_states.get(f.name, f.state)) for f in (SMTP_OK, DNS_OK)
    )
    if state == "up":
        return replace(RELAY1_UP, state=state, forwards=forwards)
    return replace(
        RELAY1_UP,
        state=state,
        forwards=forwards,
        error_kind="connect-refused",
        last_error="refused",
    )


def outages(events: list[Event]) -> list[tuple[str | None, str | None, str | None]]:
    return [(e.forward, e.state, e.error_kind) for e in events if e.kind == "outage"]


def probes(on: bool = True) -> Any:
    return lambda _name: on


def test_startup_is_no_outage_but_a_failed_first_attempt_is() -> None:
    rec = Recorder()
    starting = relay("connecting", smtp="down", dns="down")
    starting = replace(starting, error_kind=None, last_error=None)
    events = rec.observe(snap(starting), T0, probes())
    assert [(e.forward, e.state) for e in events if e.kind == "forward"] == [
        ("smtp", "added"),
        ("smtp", "down"),
        ("dns", "added"),
        ("dns", "down"),
    ]
    assert outages(events) == []
    events = rec.observe(snap(relay("backoff", smtp="down", dns="down")), T0 + 1, probes())
    assert outages(events) == [
        ("smtp", "start", "connect-refused"),
        ("dns", "start", "connect-refused"),
    ]


def test_a_tunnel_cause_is_recorded_on_every_forward_and_ends_after_a_probe() -> None:
    rec = Recorder()
    assert outages(rec.observe(snap(relay()), T0, probes())) == []
    events = rec.observe(snap(relay("backoff", smtp="down", dns="down")), T0 + 1, probes())
    assert outages(events) == [
        ("smtp", "start", "connect-refused"),
        ("dns", "start", "connect-refused"),
    ]
    starts = [e for e in events if e.kind == "outage"]
    assert all(e.reason == "refused" for e in starts)
    # Up again, but the last probe ran before the forward came back: still out.
    back = NOW + timedelta(seconds=60)
    up = relay()
    up = replace(up, forwards=tuple(replace(f, since=back) for f in up.forwards))
    assert outages(rec.observe(snap(up), T0 + 60, probes())) == []
    probed = replace(
        up,
        forwards=(
            with_probe(up.forwards[0], at=back),
            up.forwards[1],
        ),
    )
    assert outages(rec.observe(snap(probed), T0 + 61, probes())) == [("smtp", "end", None)]
    # With probes off, being up again is enough.
    assert outages(rec.observe(snap(probed), T0 + 62, probes(False))) == [("dns", "end", None)]


def test_a_failing_probe_is_an_outage_and_a_refused_listen_too() -> None:
    rec = Recorder()
    rec.observe(snap(relay()), T0, probes())
    bad = ProbeResult(ok=False, latency_ms=None, at=NOW, detail="no 220 banner")
    failing = relay()
    failing = replace(failing, forwards=(replace(SMTP_OK, probe=bad), DNS_OK))
    events = rec.observe(snap(failing), T0 + 1, probes())
    assert outages(events) == [("smtp", "start", "probe-failed")]
    assert [(e.forward, e.state, e.reason) for e in events if e.kind == "probe"] == [
        ("smtp", "failed", "no 220 banner")
    ]
    dns_refused = replace(DNS_OK, state="refused", error="held")
    refused = replace(failing, forwards=(replace(SMTP_OK, probe=bad), dns_refused))
    events = rec.observe(snap(refused), T0 + 2, probes())
    assert outages(events) == [("dns", "start", "forward-refused")]
    good = replace(SMTP_OK, probe=replace(bad, ok=True, at=NOW + timedelta(seconds=3)))
    events = rec.observe(snap(replace(refused, forwards=(good, DNS_OK))), T0 + 3, probes())
    assert [(e.forward, e.state) for e in events if e.kind == "probe"] == [("smtp", "ok")]


def test_a_removed_forward_ends_its_presence_and_a_stopped_tunnel_is_no_outage() -> None:
    rec = Recorder()
    rec.observe(snap(relay()), T0, probes())
    events = rec.observe(snap(replace(relay(), state="stopped")), T0 + 1, probes())
    assert sorted((e.forward, e.state) for e in events if e.kind == "forward") == [
        ("dns", "removed"),
        ("smtp", "removed"),
    ]
    assert outages(events) == []


def write_history(path: Path, sessions: list[tuple[float, float, list[Event]]]) -> None:
    for start, stop, events in sessions:
        writer = Writer(path, pid=os.getpid(), config="/x.toml")
        writer.start(now=start)
        for event in events:
            writer.record(event)
        writer.close(now=stop)


def fwd_events(at: float, name: str = "smtp") -> list[Event]:
    return [
        Event(at, "forward", "relay1", name, "added"),
        Event(at, "forward", "relay1", name, "up"),
    ]


def test_an_outage_records_each_new_cause_and_the_report_lists_them(tmp_path: Path) -> None:
    """The relay refused, then came back with another host key: one outage, begun by
    connect-refused, with host-key-mismatch recorded when it took over (once)."""
    rec = Recorder()
    rec.observe(snap(relay()), T0, probes(False))
    refused = relay("backoff", smtp="down", dns="down")
    mismatch = replace(refused, error_kind="host-key-mismatch", last_error="key changed")
    events = rec.observe(snap(refused), T0 + 1, probes(False))
    events += rec.observe(snap(replace(refused, state="connecting")), T0 + 2, probes(False))
    events += rec.observe(snap(mismatch), T0 + 3, probes(False))
    events += rec.observe(snap(replace(mismatch, state="connecting")), T0 + 4, probes(False))
    events += rec.observe(snap(mismatch), T0 + 5, probes(False))
    causes = [(e.forward, e.at, e.error_kind, e.reason) for e in events if e.kind == "cause"]
    assert causes == [
        ("smtp", T0 + 3, "host-key-mismatch", "key changed"),
        ("dns", T0 + 3, "host-key-mismatch", "key changed"),
    ]
    events += rec.observe(snap(relay()), T0 + 9, probes(False))
    db = tmp_path / "h.db"
    write_history(db, [(T0 - 10, T0 + 10, [*fwd_events(T0 - 10), *events])])
    conn = connect(db, readonly=True)
    doc = history_report.report(conn, T0 - 60, T0 + 10)
    conn.close()
    [smtp] = [o for o in doc["outages"] if o["forward"] == "smtp"]
    assert (smtp["error_kind"], smtp["duration_s"]) == ("connect-refused", 8.0)
    assert [(c["error_kind"], c["reason"]) for c in smtp["causes"]] == [
        ("connect-refused", "refused"),
        ("host-key-mismatch", "key changed"),
    ]
    assert smtp["causes"][1]["at"] == history_report.iso(T0 + 3)


def test_report_outages_and_availability(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    until = T0
    start = until - 10 * DAY  # recording began ten days ago
    out_start, out_len = until - 2 * DAY, 864.0  # a hundredth of a day, two days ago
    events = [
        *fwd_events(start),
        *fwd_events(start, "dns"),
        Event(out_start, "outage", "relay1", "smtp", "start", "connect-refused", "no route"),
        Event(out_start + out_len, "outage", "relay1", "smtp", "end"),
        Event(until - 60, "outage", "relay1", "dns", "start", "probe-failed", "timeout"),
        Event(until - 59.5, "outage", "relay1", "dns", "end"),
    ]
    write_history(db, [(start, until, events)])
    conn = connect(db, readonly=True)
    doc = history_report.report(conn, until - 7 * DAY, until)
    conn.close()
    assert doc["since"] == history_report.iso(until - 7 * DAY)
    assert [(o["forward"], o["error_kind"], o["duration_s"]) for o in doc["outages"]] == [
        ("smtp", "connect-refused", out_len),
        ("dns", "probe-failed", 0.5),
    ]
    assert doc["outages"][0]["reason"] == "no route"
    rows = {row["forward"]: row for row in doc["availability"]}
    smtp, dns = rows["smtp"], rows["dns"]
    assert smtp["24h"] == 100.0  # the outage was two days ago
    assert smtp["7d"] == pytest.approx(100 - 100 * out_len / (7 * DAY), abs=0.01)
    assert smtp["30d"] == pytest.approx(100 - 100 * out_len / (10 * DAY), abs=0.01)
    assert smtp["recorded_s"] == {"24h": 86_400, "7d": 604_800, "30d": 864_000}
    assert dns["24h"] == 99.99  # half a second down: never shown as 100.00
    assert 0 < dns["24h"] < 100


def test_an_outage_open_when_the_supervisor_stopped_ends_there(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    first = [*fwd_events(T0), Event(T0 + 10, "outage", "relay1", "smtp", "start", "timeout", "x")]
    # Not recorded from T0+100 to T0+200: that time is neither up nor down.
    write_history(db, [(T0, T0 + 100, first), (T0 + 200, T0 + 300, fwd_events(T0 + 200))])
    conn = connect(db, readonly=True)
    doc = history_report.report(conn, T0 - DAY, T0 + 300)
    conn.close()
    [outage] = doc["outages"]
    assert outage["end"] == history_report.iso(T0 + 100) and outage["duration_s"] == 90.0
    [row] = doc["availability"]
    assert row["recorded_s"]["24h"] == 200
    assert row["24h"] == pytest.approx(100 * 110 / 200, abs=0.01)


def test_schema_version_and_migration(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    sqlite3.connect(db).close()  # an empty file at version 0
    conn = connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(HistoryError, match="newer than this tunnelkeeper"):
        connect(db)
    with pytest.raises(HistoryError, match="no history recorded yet"):
        connect(tmp_path / "missing.db", readonly=True)


def test_an_older_schema_is_migrated_and_keeps_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunnelkeeper.history import store as history_store

    db = tmp_path / "h.db"
    monkeypatch.setattr(history_store, "SCHEMA_VERSION", 1)  # as the first release wrote it
    write_history(db, [(T0, T0 + 60, fwd_events(T0))])
    monkeypatch.undo()
    conn = connect(db, readonly=True)  # `history` reads it before any supervisor upgraded it
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    conn = connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION > 1
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "events_session" in indexes
    conn.close()
    conn = connect(db, readonly=True)
    [row] = history_report.report(conn, T0, T0 + 60)["availability"]
    conn.close()
    assert row["24h"] == 100.0 and row["recorded_s"]["24h"] == 60


def test_prune_forgets_old_events_and_the_report_still_adds_up(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    writer = Writer(db, pid=os.getpid(), config="/x.toml")
    writer.start(now=T0 - 100 * DAY)
    for event in fwd_events(T0 - 100 * DAY):
        writer.record(event)
    writer.record(Event(T0 - 99 * DAY, "outage", "relay1", "smtp", "start", "timeout", "old"))
    writer.record(Event(T0 - 99 * DAY + 5, "outage", "relay1", "smtp", "end"))
    writer.heartbeat(T0 - 89 * DAY)  # still recording when the retention cuts in
    writer.prune(T0 - 90 * DAY)
    writer.close(now=T0)
    conn = connect(db, readonly=True)
    old = conn.execute("SELECT count(*) FROM events WHERE at < ?", (T0 - 90 * DAY,))
    assert old.fetchone()[0] == 0
    doc = history_report.report(conn, T0 - 30 * DAY, T0)
    conn.close()
    [row] = doc["availability"]  # still known although its "added" was pruned away
    assert row["30d"] == 100.0 and row["recorded_s"]["30d"] == 30 * 86_400


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    writer = Writer(db, pid=os.getpid(), config="/x.toml", queue_size=10)
    writer.start()
    blocker = sqlite3.connect(db, timeout=10, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer thread now waits for the lock
    began = time.monotonic()
    for i in range(200):
        writer.record(Event(T0 + i, "tunnel", "relay1", state="up"))
    assert time.monotonic() - began < 0.5
    assert 150 <= writer.dropped <= 190  # 10 queued, one batch taken by the thread at most
    blocker.execute("COMMIT")
    blocker.close()
    writer.close()
    conn = connect(db, readonly=True)
    written = conn.execute("SELECT count(*) FROM events WHERE kind = 'tunnel'").fetchone()[0]
    conn.close()
    assert written == 200 - writer.dropped


def test_a_reader_never_blocks_the_writer(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    writer = Writer(db, pid=os.getpid(), config="/x.toml")
    writer.start()
    reader = connect(db, readonly=True)
    reader.execute("BEGIN")
    before = reader.execute("SELECT count(*) FROM events").fetchone()[0]
    for i in range(50):
        writer.record(Event(T0 + i, "tunnel", "relay1", state="up"))
    until_blocking(lambda: writer.written >= 50, 5, "50 events committed", interval=0.01)
    assert writer.written == 50  # committed while the reader holds its snapshot open
    assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == before
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == before + 50
    reader.close()
    writer.close()


BURST = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from tunnelkeeper.history.store import Event, Writer
    writer = Writer(Path(sys.argv[1]), pid=os.getpid(), config="/x.toml", queue_size=100_000)
    writer.start()
    now = time.time()
    writer.record(Event(now, "forward", "relay1", "smtp", "added"))
    i = 0
    while True:  # outages of a microsecond, back to back, until killed
        at = time.time()
        writer.record(Event(at, "outage", "relay1", "smtp", "start", "timeout", f"#{i}"))
        writer.record(Event(at + 1e-6, "outage", "relay1", "smtp", "end"))
        if i % 50 == 0:
            writer.heartbeat(at)
        i += 1
        if i % 200 == 0:
            time.sleep(0.001)
    """
)


def test_kill_9_mid_burst_leaves_a_consistent_database(tmp_path: Path) -> None:
    db = tmp_path / "state" / "history.db"
    errors = tmp_path / "writer.err"
    with errors.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", BURST, str(db)], stderr=err)
    try:
        deadline = time.monotonic() + 30
        count = 0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            assert proc.poll() is None, f"the writer exited {proc.returncode}: {errors.read_text()}"
            try:
                conn = connect(db, readonly=True)
                count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
                conn.close()
            except (HistoryError, sqlite3.Error):
                continue  # not created yet
            if count > 5_000:
                break
        assert count > 5_000, f"the writer wrote {count} events in 30 s"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    conn = connect(db)  # opening for writing recovers the WAL
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    starts, ends = (
        conn.execute(f"SELECT count(*) FROM events WHERE state = '{s}'").fetchone()[0]
        for s in ("start", "end")
    )
    assert starts - ends in (0, 1, 2)  # a transaction commits whole or not at all
    conn.close()
    cfg = tmp_path / "tunnelkeeper.toml"
    cfg.write_text(
        f'[supervisor]\nhistory_path = "{db}"\n[[tunnel]]\nname = "relay1"\nhost = "r.example"\n'
        'user = "t"\n[[tunnel.forward]]\nname = "smtp"\nlisten = 2525\ntarget = 25\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "tunnelkeeper", "history", "--json", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["outages"]) >= count // 3
    assert all(o["end"] is not None for o in doc["outages"])  # the killed session ended
    [row] = doc["availability"]
    assert 0 < row["24h"] < 100


def test_history_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tunnelkeeper.toml"
    body = (
        '[[tunnel]]\nname = "r"\nhost = "r.example"\nuser = "t"\n'
        '[[tunnel.forward]]\nname = "s"\nlisten = 2525\ntarget = 25\n'
    )
    cfg.write_text(f'[supervisor]\nhistory_path = "none.db"\n{body}')
    assert main(["history", "-c", str(cfg)]) == 1
    assert "no history recorded yet" in capsys.readouterr().err
    assert main(["history", "-c", str(cfg), "--since", "soon"]) == 2
    assert "not a duration" in capsys.readouterr().err
    cfg.write_text(f"[supervisor]\nhistory = false\n{body}")
    assert main(["history", "-c", str(cfg)]) == 2
    assert "history: is false" in capsys.readouterr().err


def test_history_table_for_people(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "h.db"
    now = time.time()
    events = [
        *fwd_events(now - 3600),
        Event(now - 600, "outage", "relay1", "smtp", "start", "auth-failed", "key [refused]"),
        Event(now - 595, "cause", "relay1", "smtp", None, "timeout", "no answer"),
        Event(now - 590, "outage", "relay1", "smtp", "end"),
    ]
    write_history(db, [(now - 3600, now, events)])
    cfg = tmp_path / "tunnelkeeper.toml"
    cfg.write_text(
        f'[supervisor]\nhistory_path = "{db}"\n[[tunnel]]\nname = "relay1"\nhost = "r.example"\n'
        'user = "t"\n[[tunnel.forward]]\nname = "smtp"\nlisten = 2525\ntarget = 25\n'
    )
    assert main(["history", "-c", str(cfg), "--since", "90m"]) == 0
    out = capsys.readouterr().out
    assert "relay1/smtp" in out and "[auth-failed] key [refused]" in out
    later = datetime.fromtimestamp(now - 595).astimezone().strftime("%H:%M:%S")
    assert f"then at {later}: [timeout]" in out  # the table may wrap the reason
    assert "99.72%" in out  # 10 s of 3600 recorded
    assert main(["history", "-c", str(cfg), "--since", "5m"]) == 0
    assert "no outages in this span" in capsys.readouterr().out
    # A tunnel neither configured nor ever recorded is a usage error that names those known.
    assert main(["history", "-c", str(cfg), "--tunnel", "relay9"]) == 2
    err = capsys.readouterr().err
    assert "--tunnel relay9: no such tunnel" in err and "(known: relay1)" in err


def test_writer_thread_is_not_the_caller(tmp_path: Path) -> None:
    writer = Writer(tmp_path / "h.db", pid=os.getpid(), config="/x.toml")
    writer.start()
    assert writer._thread.is_alive() and writer._thread is not threading.current_thread()
    writer.close()
    assert not writer._thread.is_alive()


def test_a_clean_stop_is_no_outage_but_a_lost_connection_is_from_its_first_sign() -> None:
    rec = Recorder()
    rec.observe(snap(relay()), T0, probes())
    # The connection ended; the tunnel has not said why yet (or that it is stopping).
    ending = relay(smtp="down", dns="down")
    assert outages(rec.observe(snap(ending), T0 + 1, probes())) == []
    stopped = rec.observe(snap(replace(ending, state="stopped")), T0 + 2, probes())
    assert outages(stopped) == []
    rec = Recorder()
    rec.observe(snap(relay()), T0, probes())
    rec.observe(snap(ending), T0 + 1, probes())
    events = rec.observe(snap(relay("backoff", smtp="down", dns="down")), T0 + 2, probes())
    assert [(e.forward, e.at, e.error_kind) for e in events if e.kind == "outage"] == [
        ("smtp", T0 + 1, "connect-refused"),
        ("dns", T0 + 1, "connect-refused"),
    ]
