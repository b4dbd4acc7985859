"""The Prometheus alerts and the Grafana dashboard in deploy/: the rules pass their unit tests in
the real ``promtool`` (Debian package ``prometheus``), every dashboard query is valid PromQL, and
every metric the rules and the dashboard name is one a live proxy exports on /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import yaml
from compat.common import require_program
from harness import ROOT, running_proxy
from servers import HOST, find_free_port

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "imapmoveproxy.json"
_METRIC_RE = re.compile(r"\bimapmoveproxy_[a-z_]+\b")
_TYPE_RE = re.compile(r"^# TYPE (\S+) (\S+)$", re.M)
# The series a metric of each type shows up as in PromQL, from its "# TYPE" name (a counter's
# carries "_total" in the exposition prometheus_client writes).
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    command = [require_program("promtool", "prometheus"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=60)


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_alert_rules_pass_promtool_and_their_unit_tests():
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout
    tested = promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tested_alerts = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    names = {rule["alert"] for group in groups for rule in group["rules"]}
    assert tested_alerts == names, "every alert needs a unit test"


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each query (Grafana's variables replaced) as a recording rule."""
    rules = [
        {"record": f"dashboard:query{index}",
         "expr": expr.replace("$__rate_interval", "5m").replace("$instance", ".*")}
        for index, expr in enumerate(dashboard_expressions())
    ]  # fmt: skip
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_covers_what_operators_watch():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "imapmoveproxy" and dashboard["title"] == "imapmoveproxy"
    text = "\n".join(dashboard_expressions())
    for needed in (
        "imapmoveproxy_connections_open",
        "imapmoveproxy_bytes_total",
        "imapmoveproxy_commands_total",
        "sum by (policy, outcome) (rate(imapmoveproxy_moves_total",
        "imapmoveproxy_move_duration_seconds_bucket",
        "imapmoveproxy_rollbacks_total",
        "imapmoveproxy_upstream_connect_seconds_bucket",
        "imapmoveproxy_journal_pending_entries",
        "imapmoveproxy_journal_recoveries_total",
    ):
        assert needed in text, needed
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]


def test_every_metric_named_is_exported_by_a_live_proxy(dovecot_legacy, tmp_path):
    port = find_free_port()
    metrics = ("--metrics", f"{HOST}:{port}")
    with (
        running_proxy(dovecot_legacy.address, tmp_path / "proxy.log", *metrics),
        urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response,
    ):
        exposition = response.read().decode()
    exported = {
        name + suffix for name, kind in _TYPE_RE.findall(exposition) for suffix in _SUFFIXES[kind]
    }
    named = {
        name
        for expr in alert_expressions() + dashboard_expressions()
        for name in _METRIC_RE.findall(expr)
    }
    assert len(named) >= 15, named
    assert named - exported == set(), f"named but not exported: {sorted(named - exported)}"
