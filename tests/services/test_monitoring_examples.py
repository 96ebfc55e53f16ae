"""examples/prometheus and examples/grafana: promtool checks and runs the alert tests, and every
metric the rules and the dashboard name is one a running exporter really serves."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import need
from tests.support.polling import wait_listening
from tests.support.snapshots import with_history
from tests.support.sshd import free_port
from tunnelkeeper.config import Endpoint
from tunnelkeeper.services.metrics import serve

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RULES = EXAMPLES / "prometheus" / "tunnelkeeper.rules.yml"
DASHBOARD = EXAMPLES / "grafana" / "tunnelkeeper.json"
ALERTS = {"TunnelDown", "ForwardProbeFailing", "Flapping", "SupervisorAbsent"}
# Series Prometheus itself makes for every scrape target, not the exporter.
PROMETHEUS_OWN = {"up"}
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}  # fmt: skip


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    need("promtool")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def rule_exprs(text: str) -> dict[str, str]:
    """alert name -> expression, from our rules file (one `expr:` per rule, plain or `|`)."""
    exprs: dict[str, str] = {}
    name = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"\s*- alert: (\S+)", line):
            name = m[1]
        elif (m := re.match(r"(\s*)expr: (.*)$", line)) and name:
            if m[2].strip() == "|":
                indent, body = len(m[1]), []
                for nxt in lines[i + 1 :]:
                    if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                        break
                    body.append(nxt.strip())
                exprs[name] = " ".join(b for b in body if b)
            else:
                exprs[name] = m[2].strip()
    return exprs


def grafana_queries(doc: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The panels' expressions and the template variables' queries."""
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    variables = [
        v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        for v in doc["templating"]["list"]
        if v["type"] == "query"
    ]
    return exprs, variables


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if m[2] or m[1] in KEYWORDS:
            continue  # a function call or a keyword
        names.add(m[1])
    return names


def substitute(expr: str) -> str:
    """Grafana's variables replaced the way Grafana would, for promtool to parse."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


@pytest.fixture(scope="module")
def served() -> set[str]:
    """Every sample name a real exporter serves for a snapshot that has them all."""
    port = free_port()

    async def scrape() -> str:
        task = asyncio.create_task(serve(Endpoint(host="127.0.0.1", port=port), with_history))
        try:
            await wait_listening(port)
            url = f"http://127.0.0.1:{port}/metrics"

            def get() -> str:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    return str(reply.read().decode())

            return await asyncio.to_thread(get)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    text = asyncio.run(scrape())
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_promtool_checks_the_rules_and_runs_their_tests() -> None:
    check = promtool("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in check.stdout
    assert set(rule_exprs(RULES.read_text())) == ALERTS
    tests = sorted(RULES.parent.glob("*.test.yml"))
    assert tests, "no rule tests beside the rules"
    for test in tests:
        run = promtool("test", "rules", test.name, cwd=test.parent)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "SUCCESS" in run.stdout
    tested = {m for t in tests for m in re.findall(r"alertname: (\w+)", t.read_text())}
    assert tested == ALERTS  # every alert has its test


def test_the_rules_name_only_served_metrics(served: set[str]) -> None:
    for alert, expr in rule_exprs(RULES.read_text()).items():
        names = metric_names(expr)
        assert names, f"{alert}: no metric found in {expr!r}"
        assert names <= served | PROMETHEUS_OWN, f"{alert}: {names - served} not served"


def test_the_dashboard_names_only_served_metrics(served: set[str]) -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs, variables = grafana_queries(doc)
    assert len(exprs) >= 10
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        assert names <= served, f"{names - served} not served, in {expr!r}"
    for query in variables:
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert m, query
        assert metric_names(m[1]) <= served and metric_names(m[1]), query
    shown = {n for e in exprs for n in metric_names(e)}
    assert "tunnelkeeper_forward_availability_24h_percent" in shown
    assert "tunnelkeeper_tunnel_up" in shown and "tunnelkeeper_forward_up" in shown


def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs, _ = grafana_queries(doc)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:expr{i}", "expr": substitute(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(json.dumps(rules), encoding="utf-8")  # JSON is YAML
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


def test_metric_names_are_found_and_nothing_else() -> None:
    expr = (
        'sum by (tunnel) (rate(tunnelkeeper_forward_bytes_in_total{tunnel=~"$tunnel"}[5m]))'
        " / on (tunnel) group_left tunnelkeeper_tunnel_up offset 1h or absent(x_y) and time()"
    )
    assert metric_names(expr) == {
        "tunnelkeeper_forward_bytes_in_total",
        "tunnelkeeper_tunnel_up",
        "x_y",
    }
