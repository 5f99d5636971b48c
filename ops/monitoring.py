"""Prometheus for the stack: render ops/prometheus.yml.template per deployment and run it.

Like the gateway (ops/gateway.py), one template serves both deployments:
- local: `write_local_conf(...)` into STATE/prometheus/ (config + a copy of the rules), Prometheus
  (Debian package) started by `make run` as our own process on 127.0.0.1, data under the state folder;
- compose: `python -m ops.monitoring compose` rewrites ops/prometheus.yml (checked by a unit test).
Alert rules: ops/alerts.yml. Grafana (compose only): ops/grafana/.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

OPS = Path(__file__).resolve().parent
TEMPLATE = OPS / "prometheus.yml.template"
RULES = OPS / "alerts.yml"
COMPOSE_CONF = OPS / "prometheus.yml"
GRAFANA = OPS / "grafana"
SCRAPE_INTERVAL = "5s"


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    return shutil.which("promtool")


def render_prometheus_conf(*, profile: str, rules: str, command: list[str], relay: list[str], query: list[str],
                           prometheus: list[str], scrape_interval: str = SCRAPE_INTERVAL) -> str:
    """The prometheus.yml text. Targets are "host:port" strings."""

    def targets(addrs: list[str]) -> str:
        return ", ".join(f'"{a}"' for a in addrs)

    values = {
        "@@SCRAPE_INTERVAL@@": scrape_interval,
        "@@SCRAPE_TIMEOUT@@": "1s" if scrape_interval == "1s" else "4s",
        "@@PROFILE@@": profile,
        "@@RULES@@": rules,
        "@@COMMAND_TARGETS@@": targets(command),
        "@@RELAY_TARGETS@@": targets(relay),
        "@@QUERY_TARGETS@@": targets(query),
        "@@PROMETHEUS_TARGETS@@": targets(prometheus),
    }
    text = TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(key, value)
    if "@@" in text:
        raise ValueError("unrendered placeholder left in prometheus template")
    return text


def render_compose_conf() -> str:
    """compose.yaml's Prometheus config (compose service names; the rules file beside it, as in ops/)."""
    return render_prometheus_conf(
        profile="compose", rules="alerts.yml", command=["command-1:8001", "command-2:8001"], relay=["relay:8011"],
        query=["query-1:8002", "query-2:8003"], prometheus=["localhost:9090"],
    )


def write_local_conf(state_dir: Path, *, profile: str, host: str, port: int, command_port: int, relay_port: int,
                     query_ports: list[int], scrape_interval: str = SCRAPE_INTERVAL,
                     command_ports: list[int] | None = None) -> Path:
    """Render STATE/prometheus/prometheus.yml (and copy the rules beside it); returns its path."""
    folder = state_dir / "prometheus"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    rules = folder / "alerts.yml"
    shutil.copyfile(RULES, rules)
    conf = folder / "prometheus.yml"
    conf.write_text(render_prometheus_conf(
        profile=profile, rules=rules.name, command=[f"{host}:{p}" for p in (command_ports or [command_port])],
        relay=[f"{host}:{relay_port}"],
        query=[f"{host}:{p}" for p in query_ports], prometheus=[f"{host}:{port}"], scrape_interval=scrape_interval,
    ))
    return conf


def prometheus_argv(conf: Path, *, host: str, port: int, retention: str = "15d") -> list[str]:
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError("prometheus is not installed (make install)")
    return [binary, f"--config.file={conf}", f"--storage.tsdb.path={conf.parent / 'data'}",
            f"--storage.tsdb.retention.time={retention}", f"--web.listen-address={host}:{port}",
            "--log.level=warn"]


def check(kind: str, path: Path) -> subprocess.CompletedProcess:
    """promtool check config|rules PATH."""
    tool = promtool_binary()
    if tool is None:
        raise FileNotFoundError("promtool is not installed (make install: Debian package prometheus)")
    return subprocess.run([tool, "check", kind, str(path)], capture_output=True, text=True, timeout=60)


# PromQL words that are not metric names (functions are recognised by the "(" after them).
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "or", "and", "unless", "bool",
                 "offset", "le", "inf", "nan"}
# Series Prometheus makes itself, not a service.
_PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label values, ranges and grouping removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", e)
    names = re.findall(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", e)
    return {n for n in names if n.lower() not in _PROMQL_WORDS and n not in _PROMETHEUS_OWN}


def referenced_metrics() -> dict[str, set[str]]:
    """metric name -> where it is used (alert names, dashboard panel titles)."""
    import yaml

    uses: dict[str, set[str]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                uses.setdefault(name, set()).add(f"alert {rule.get('alert') or rule.get('record')}")
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                for name in metric_names(target["expr"]):
                    uses.setdefault(name, set()).add(f"{path.name}: {panel['title']}")
    return uses


def exposed_metrics(text: str) -> set[str]:
    """Every series name a /metrics page offers, including declared families without samples yet
    (a labelled counter has none until its first increment) and a histogram's _bucket/_count/_sum."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.add(name)
            if kind.strip() == "histogram":
                names.update({f"{name}_bucket", f"{name}_count", f"{name}_sum"})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def main() -> None:
    if sys.argv[1:] == ["compose"]:
        COMPOSE_CONF.write_text(render_compose_conf())
        print(f"wrote {COMPOSE_CONF}")
    else:
        print("usage: python -m ops.monitoring compose   (rewrite ops/prometheus.yml from the template)")
        sys.exit(2)


if __name__ == "__main__":
    main()
