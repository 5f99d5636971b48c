"""Profiles, ports, state folders and the environment every process of the stack gets."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

PROFILES: dict[str, dict[str, object]] = {
    "run": {
        "pg": 5432, "redis": 6379, "nats": 4222, "nats_monitor": 8222, "kafka": 9092,
        "gateway": 3000, "command": 8001, "query": (8002, 8003), "relay_metrics": 8011,
        "prometheus": 9090, "command_2": 8004,
    },
    "test": {
        "pg": 15432, "redis": 16379, "nats": 14222, "nats_monitor": 18222, "kafka": 19092,
        "gateway": 13000, "command": 18001, "query": (18002, 18003), "relay_metrics": 18011,
        "prometheus": 19090, "command_2": 18004,
    },
}
# Per-port overrides; EXCHANGE_PORT_OFFSET shifts every default port of the profile at once.
PORT_ENV = {
    "pg": "EXCHANGE_PG_PORT", "redis": "EXCHANGE_REDIS_PORT", "nats": "EXCHANGE_NATS_PORT",
    "nats_monitor": "EXCHANGE_NATS_MONITOR_PORT", "kafka": "EXCHANGE_KAFKA_PORT",
    "gateway": "EXCHANGE_GATEWAY_PORT", "command": "EXCHANGE_COMMAND_PORT",
    "query": "EXCHANGE_QUERY_PORTS", "relay_metrics": "EXCHANGE_RELAY_METRICS_PORT",
    "prometheus": "EXCHANGE_PROMETHEUS_PORT", "command_2": "EXCHANGE_COMMAND_2_PORT",
}

HOST = "127.0.0.1"
SERVERS = ("postgres", "redis", "nats", "kafka")
SERVICES = ("command", "relay", "query-1", "query-2")
# Several command nodes (issue 14): "command" is node command-1; "command-2" runs when the profile
# has two (`make run` by default; EXCHANGE_COMMAND_NODES=1 runs one; tests run one unless asked).
ALL_SERVICES = ("command", "command-2", "relay", "query-1", "query-2")
COMMAND_NODES_DEFAULT = {"run": 2, "test": 1}
SERVICE_MODULES = {
    "command": "command_service",
    "command-2": "command_service",
    "relay": "relay",
    "query-1": "query_service",
    "query-2": "query_service",
}
# What /proc/PID/cmdline must contain for a pid file to be trusted (a pid can be reused).
SERVER_MARKER = {"postgres": "postgres", "redis": "redis-server", "nats": "nats-server", "kafka": "tansu"}
SERVER_PORT_KEY = {"postgres": "pg", "redis": "redis", "nats": "nats", "kafka": "kafka"}
SERVER_LOG = {"postgres": "postgres.log", "redis": "redis.log", "nats": "nats.log", "kafka": "tansu.log"}

START_TIMEOUT = float(os.environ.get("EXCHANGE_START_TIMEOUT", "30"))
STOP_TIMEOUT = 15.0



class StackError(RuntimeError):
    """A failure with a message meant for the person at the terminal."""


# --------------------------------------------------------------------------- internal credentials
# Issue 20: NATS accepted anyone (a forged feed message reached every /stream client, a forged seq
# silenced an instrument on all replicas) and Redis/PostgreSQL had no passwords. Each state folder
# gets its own random passwords, generated once and kept in STATE/credentials.json (mode 600):
# a restart reuses them (PostgreSQL's data folder and a running server keep what they were given).
CREDENTIALS_FILE = "credentials.json"
# NATS users (ops/stack/servers.py nats_conf: what each may publish and subscribe).
NATS_COMMAND_USER = "command"
NATS_QUERY_USER = "query"
NATS_RELAY_USER = "relay"
_CREDENTIAL_KEYS = ("pg_password", "redis_password", "nats_command_password", "nats_query_password",
                    "nats_relay_password")
# Added after state folders with credentials existed: generated into such a file when missing.
_LATER_CREDENTIAL_KEYS = ("nats_relay_password",)


@dataclass(frozen=True)
class Credentials:
    pg_password: str
    redis_password: str
    nats_command_password: str
    nats_query_password: str
    nats_relay_password: str


def credentials_path(state_dir: Path) -> Path:
    return state_dir / CREDENTIALS_FILE


def credentials(state_dir: Path) -> Credentials:
    """The state folder's internal passwords: read, or generated on first use (atomically: two
    processes asking at once get the same ones). The file is created with mode 600."""
    path = credentials_path(state_dir)
    try:
        return _read_credentials(path)
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o711)
    # token_urlsafe: letters, digits, '-' and '_' only - safe inside URLs, DSNs and config files.
    tmp = _private_json(path, {k: secrets.token_urlsafe(24) for k in _CREDENTIAL_KEYS})
    try:
        os.link(tmp, path)  # fails if another process created it first: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_credentials(path)


def _private_json(path: Path, values: dict) -> Path:
    """`values` written to a mode-600 temporary file beside `path`, for the caller to move in place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(values, f, indent=2)
        f.write("\n")
    return tmp


def _read_credentials(path: Path) -> Credentials:
    data = json.loads(path.read_text())
    later = [k for k in _LATER_CREDENTIAL_KEYS if not data.get(k)]
    if later:
        data.update({k: secrets.token_urlsafe(24) for k in later})
        os.replace(_private_json(path, data), path)
    missing = [k for k in _CREDENTIAL_KEYS if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise StackError(f"{path}: missing {', '.join(missing)}; remove the file to generate new credentials "
                         "(then restart the stack: `make stop`)")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return Credentials(**{k: data[k] for k in _CREDENTIAL_KEYS})


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class StackConfig:
    profile: str
    state_dir: Path
    pg_port: int
    redis_port: int
    nats_port: int
    nats_monitor_port: int
    kafka_port: int
    gateway_port: int
    command_port: int
    query_ports: tuple[int, ...]
    relay_metrics_port: int
    prometheus_port: int = 9090
    command_2_port: int = 8004
    command_nodes: int = 1
    host: str = HOST

    @property
    def credentials(self) -> Credentials:
        return credentials(self.state_dir)

    @property
    def pg_dsn(self) -> str:
        return f"postgresql://postgres:{self.credentials.pg_password}@{self.host}:{self.pg_port}/exchange"

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.credentials.redis_password}@{self.host}:{self.redis_port}/0"

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host}:{self.nats_port}"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def command_url(self) -> str:
        return f"http://{self.host}:{self.command_port}"

    @property
    def query_urls(self) -> list[str]:
        return [f"http://{self.host}:{p}" for p in self.query_ports]

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def pg_dir(self) -> Path:
        return self.state_dir / "pg"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    def server_port(self, name: str) -> int:
        return getattr(self, f"{SERVER_PORT_KEY[name]}_port")

    @property
    def services(self) -> tuple[str, ...]:
        """The services this profile runs: one or two command nodes, the relay, two query replicas."""
        return ("command", "command-2")[: self.command_nodes] + ("relay", "query-1", "query-2")

    @property
    def command_ports(self) -> list[int]:
        return [self.command_port, self.command_2_port][: self.command_nodes]

    def service_port(self, name: str) -> int:
        if name == "command":
            return self.command_port
        if name == "command-2":
            return self.command_2_port
        if name == "relay":
            return self.relay_metrics_port
        if name == "gateway":
            return self.gateway_port
        if name == "prometheus":
            return self.prometheus_port
        if name.startswith("query-"):
            return self.query_ports[int(name.split("-")[1]) - 1]
        raise KeyError(name)

    def log_path(self, name: str) -> Path:
        return self.logs / (SERVER_LOG.get(name) or f"{name}.log")

    def pid_path(self, name: str) -> Path:
        if name == "postgres":
            return self.pg_data / "postmaster.pid"
        return self.run_dir / f"{name}.pid"


def state_dir_for(profile: str) -> Path:
    # Outside the checkout: PostgreSQL runs as user postgres, who cannot traverse /root (mode 700).
    digest = hashlib.sha1(str(REPO).encode()).hexdigest()[:8]
    return Path(os.environ.get("EXCHANGE_STATE_BASE", "/var/tmp")) / f"exchange-{profile}-{digest}"


def config(profile: str = "test") -> StackConfig:
    """Ports and paths of a profile: defaults, shifted by EXCHANGE_PORT_OFFSET, overridden per port.

    Overrides are ignored when EXCHANGE_PROFILE names another profile: a shell that sourced
    `python -m ops.stack env --profile test` must not move the run profile's ports.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (run or test)")
    env = os.environ
    use_env = env.get("EXCHANGE_PROFILE", profile) == profile
    offset = int(env.get("EXCHANGE_PORT_OFFSET") or 0) if use_env else 0
    ports: dict[str, object] = {}
    for key, default in PROFILES[profile].items():
        raw = env.get(PORT_ENV[key]) if use_env else None
        if key == "query":
            ports[key] = (
                tuple(int(p) for p in raw.split(",") if p.strip())
                if raw
                else tuple(p + offset for p in default)  # type: ignore[union-attr]
            )
        else:
            ports[key] = int(raw) if raw else default + offset  # type: ignore[operator]
    return StackConfig(
        profile=profile,
        state_dir=state_dir_for(profile),
        pg_port=ports["pg"],  # type: ignore[arg-type]
        redis_port=ports["redis"],  # type: ignore[arg-type]
        nats_port=ports["nats"],  # type: ignore[arg-type]
        nats_monitor_port=ports["nats_monitor"],  # type: ignore[arg-type]
        kafka_port=ports["kafka"],  # type: ignore[arg-type]
        gateway_port=ports["gateway"],  # type: ignore[arg-type]
        command_port=ports["command"],  # type: ignore[arg-type]
        query_ports=ports["query"],  # type: ignore[arg-type]
        relay_metrics_port=ports["relay_metrics"],  # type: ignore[arg-type]
        prometheus_port=ports["prometheus"],  # type: ignore[arg-type]
        command_2_port=ports["command_2"],  # type: ignore[arg-type]
        command_nodes=_command_nodes(profile, env if use_env else {}),
    )


def _command_nodes(profile: str, env) -> int:
    raw = env.get("EXCHANGE_COMMAND_NODES") or str(COMMAND_NODES_DEFAULT[profile])
    if raw not in ("1", "2"):
        raise StackError(f"EXCHANGE_COMMAND_NODES={raw!r} is not valid: expected 1 or 2")
    return int(raw)


def _cfg(profile_or_cfg: str | StackConfig) -> StackConfig:
    return profile_or_cfg if isinstance(profile_or_cfg, StackConfig) else config(profile_or_cfg)


def exchange_env(profile: str | StackConfig = "test") -> dict[str, str]:
    """The EXCHANGE_* variables of a profile (what `env` prints and every service reads)."""
    cfg = _cfg(profile)
    env = os.environ
    nodes = {}
    if cfg.command_nodes > 1:
        # Every command node (the query service's system health asks each one). Only with several:
        # a process that points EXCHANGE_COMMAND_URL at its own command service (tests) is not
        # overruled by a list naming the profile's.
        nodes["EXCHANGE_COMMAND_URLS"] = ",".join(f"http://{cfg.host}:{p}" for p in cfg.command_ports)
    return {
        **nodes,
        "EXCHANGE_PROFILE": cfg.profile,
        "EXCHANGE_PG_DSN": cfg.pg_dsn,
        "EXCHANGE_REDIS_URL": cfg.redis_url,
        "EXCHANGE_NATS_URL": cfg.nats_url,
        # Each service logs in as its own NATS user (command_service, query_service settings).
        "EXCHANGE_NATS_COMMAND_USER": NATS_COMMAND_USER,
        "EXCHANGE_NATS_COMMAND_PASSWORD": cfg.credentials.nats_command_password,
        "EXCHANGE_NATS_QUERY_USER": NATS_QUERY_USER,
        "EXCHANGE_NATS_QUERY_PASSWORD": cfg.credentials.nats_query_password,
        "EXCHANGE_NATS_RELAY_USER": NATS_RELAY_USER,
        "EXCHANGE_NATS_RELAY_PASSWORD": cfg.credentials.nats_relay_password,
        "EXCHANGE_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
        "EXCHANGE_KAFKA_TOPIC": env.get("EXCHANGE_KAFKA_TOPIC") or _events_topic()[0],
        "EXCHANGE_INSTRUMENTS_FILE": env.get("EXCHANGE_INSTRUMENTS_FILE") or str(REPO / "config" / "instruments.json"),
        "EXCHANGE_AUTH": env.get("EXCHANGE_AUTH") or "enabled",
        "EXCHANGE_HOST": cfg.host,
        "EXCHANGE_COMMAND_PORT": str(cfg.command_port),
        "EXCHANGE_QUERY_PORT": str(cfg.query_ports[0]),
        "EXCHANGE_QUERY_PORTS": ",".join(str(p) for p in cfg.query_ports),
        "EXCHANGE_RELAY_METRICS_PORT": str(cfg.relay_metrics_port),
        "EXCHANGE_COMMAND_URL": cfg.command_url,
        "EXCHANGE_QUERY_URL": cfg.query_urls[0],
        "EXCHANGE_GATEWAY_URL": cfg.gateway_url,
        "EXCHANGE_PROMETHEUS_PORT": str(cfg.prometheus_port),
        "EXCHANGE_STATE_DIR": str(cfg.state_dir),
        # The embedded broker keeps every message: `make run` rolls topic generations
        # (relay/generations.py). Tests use one fixed topic unless a test turns rolling on.
        "EXCHANGE_TOPIC_ROLL_S": env.get("EXCHANGE_TOPIC_ROLL_S") or ("30" if cfg.profile == "run" else "0"),
    }


def service_env(profile: str | StackConfig = "test", **overrides: str) -> dict[str, str]:
    """A full environment (os.environ + the profile's EXCHANGE_* values + overrides) for a service."""
    env = dict(os.environ)
    env.update(exchange_env(profile))
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def _events_topic() -> tuple[str, int]:
    from contracts.topics import EVENTS_TOPIC, EVENTS_TOPIC_PARTITIONS

    return EVENTS_TOPIC, EVENTS_TOPIC_PARTITIONS


