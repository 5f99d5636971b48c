"""Prometheus, alert rules and Grafana files: promtool accepts the configs and rules, the compose
copy is the template's rendering, the local rendering points at the profile's ports, and the
dashboards and rules only name metrics from tests/e2e/test_observability.py's scrape (checked there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ops import monitoring, stack

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(monitoring.promtool_binary() is None,
                                reason="promtool missing: make install installs the Debian package prometheus")


def test_promtool_accepts_the_rules():
    r = monitoring.check("rules", monitoring.RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout


def test_compose_config_is_the_rendered_template_and_valid():
    assert monitoring.COMPOSE_CONF.read_text() == monitoring.render_compose_conf(), \
        "ops/prometheus.yml is stale: run python -m ops.monitoring compose"
    r = monitoring.check("config", monitoring.COMPOSE_CONF)
    assert r.returncode == 0, r.stdout + r.stderr


def test_local_config_scrapes_every_process_of_the_profile(tmp_path):
    cfg = stack.config("test")
    conf = monitoring.write_local_conf(tmp_path, profile="test", host=cfg.host, port=cfg.prometheus_port,
                                       command_port=cfg.command_port, relay_port=cfg.relay_metrics_port,
                                       query_ports=list(cfg.query_ports))
    r = monitoring.check("config", conf)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in yaml.safe_load(conf.read_text())["scrape_configs"]}
    assert jobs == {
        "command": [f"127.0.0.1:{cfg.command_port}"],
        "relay": [f"127.0.0.1:{cfg.relay_metrics_port}"],
        "query": [f"127.0.0.1:{p}" for p in cfg.query_ports],
        "prometheus": [f"127.0.0.1:{cfg.prometheus_port}"],
    }


def test_prometheus_port_follows_the_offset(monkeypatch):
    monkeypatch.setenv("EXCHANGE_PORT_OFFSET", "7")
    monkeypatch.delenv("EXCHANGE_PROMETHEUS_PORT", raising=False)
    monkeypatch.delenv("EXCHANGE_PROFILE", raising=False)
    assert stack.config("run").prometheus_port == 9097
    assert stack.exchange_env(stack.config("run"))["EXCHANGE_PROMETHEUS_PORT"] == "9097"


def test_compose_runs_prometheus_and_grafana_with_the_provisioned_files():
    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    prom = services["prometheus"]
    assert "./ops/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "./ops/alerts.yml:/etc/prometheus/alerts.yml:ro" in prom["volumes"]
    graf = services["grafana"]
    for src, dst in (("./ops/grafana/provisioning", "/etc/grafana/provisioning"),
                     ("./ops/grafana/dashboards", "/var/lib/grafana/dashboards")):
        assert f"{src}:{dst}:ro" in graf["volumes"]
        assert (REPO / src).is_dir()
    provider = yaml.safe_load((REPO / "ops/grafana/provisioning/dashboards/exchange.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    ds = yaml.safe_load((REPO / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


def test_dashboard_has_the_panels_operators_need():
    dash = json.loads((REPO / "ops/grafana/dashboards/exchange.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("orders_received_total", "order_latency_seconds_bucket", "sequencer_batch_size",
                   "sequencer_commit_seconds_bucket", "relay_lag_seconds", "projection_lag_seconds_bucket",
                   "ws_connections", "http_errors_total"):
        assert metric in exprs, metric
    assert all(t["datasource"]["uid"] == "prometheus" for p in dash["panels"] for t in p["targets"])
