"""`make run`: start every service, restart what dies, stop everything on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ops.stack.config import REPO, SERVERS, StackConfig, StackError, service_env
from ops.stack.processes import (
    _CHILDREN,
    _last_run_output,
    _listener,
    _marker,
    _pid_if_ours,
    _popen,
    _reap_zombie_children,
    port_open,
    stop_process,
)
from ops.stack.servers import (
    _check_port_free,
    _gateway_argv,
    ensure_topic,
    prometheus_argv,
    server_pid,
    spawn,
    start_server,
    stop_server,
)

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


def append_stack_log(cfg: StackConfig, line: str) -> None:
    """One line to STATE/logs/stack.log, readable by its owner only (issue 20: it was world-readable
    and held the demo keys; keys never go there now)."""
    fd = os.open(cfg.logs / "stack.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        os.fchmod(f.fileno(), 0o600)  # a log from before this change too
        f.write(line + "\n")


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
        self.children = [self._service_child(n) for n in cfg.services]
        self.children.append(_Child("gateway", self._launch_gateway, cfg.log_path("gateway")))
        self.children.append(_Child("prometheus", self._launch_prometheus, cfg.log_path("prometheus")))
        self.server_backoff = {n: 1.0 for n in SERVERS}
        self.server_next_check = 0.0
        self.server_retry_at = {n: 0.0 for n in SERVERS}
        self.log_max_bytes = _log_max_bytes()

    def _service_child(self, name: str) -> _Child:
        def launch() -> subprocess.Popen:
            return spawn(name, self.env, profile=self.cfg, new_session=True)

        return _Child(name, launch, self.cfg.log_path(name))

    def _launch_gateway(self) -> subprocess.Popen:
        _check_port_free(self.cfg, "gateway", self.cfg.gateway_port, "EXCHANGE_GATEWAY_PORT")
        return _popen(_gateway_argv(self.cfg), self.cfg.log_path("gateway"), cwd=self.cfg.state_dir)

    def _launch_prometheus(self) -> subprocess.Popen:
        _check_port_free(self.cfg, "prometheus", self.cfg.prometheus_port, "EXCHANGE_PROMETHEUS_PORT")
        return _popen(prometheus_argv(self.cfg), self.cfg.log_path("prometheus"), cwd=self.cfg.state_dir)

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

    LOG_CHECK_S = 10.0

    def _rotate_logs(self, now: float) -> None:
        """Rotate every log in the logs folder by size (issue 18), while the processes run.
        They write through inherited O_APPEND descriptors, which cannot be reopened from here,
        so a full log is copied to <name>.1 (one old copy) and truncated in place: the next
        write lands at offset 0. Lines written between the copy and the truncate (a few ms) are
        lost; that is the price of rotating without restarting anything."""
        if now < getattr(self, "_next_log_check", 0.0):
            return
        self._next_log_check = now + self.LOG_CHECK_S
        limit = self.log_max_bytes
        if limit <= 0:
            return
        for path in self.cfg.logs.glob("*.log"):
            try:
                if path.stat().st_size <= limit:
                    continue
                shutil.copyfile(path, path.with_name(path.name + ".1"))
                os.truncate(path, 0)
                self.say(f"log {path.name} rotated at {limit // 1_000_000} MB (previous part: {path.name}.1)")
            except OSError as exc:
                self.say(f"log {path.name}: rotation failed: {exc}")

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
                self._rotate_logs(now)
                _reap_zombie_children()
                time.sleep(0.2)
        finally:
            self.shutdown()
        return 0

    def _print_urls(self) -> None:
        cfg = self.cfg
        lines = [
            f"gateway        {cfg.gateway_url}   (health: {cfg.gateway_url}/healthz)",
            f"trading page   {cfg.gateway_url}/   (paste a demo key below into the order ticket)",
            "command        " + ", ".join(f"http://{cfg.host}:{p}" for p in cfg.command_ports),
            *[f"query-{i + 1}        {u}" for i, u in enumerate(cfg.query_urls)],
            f"order entry WS ws://{cfg.host}:{cfg.gateway_port}/ws",
            f"market WS      ws://{cfg.host}:{cfg.gateway_port}/stream",
            f"relay metrics  http://{cfg.host}:{cfg.relay_metrics_port}/metrics",
            f"prometheus     http://{cfg.host}:{cfg.prometheus_port}   (alerts: /alerts, targets: /targets)",
            f"logs           {cfg.logs}",
            "Ctrl-C stops everything.",
        ]
        self.say("the exchange:\n" + "\n".join("    " + line for line in lines))

    def log_only(self, message: str) -> None:
        try:
            append_stack_log(self.cfg, f"[stack {time.strftime('%H:%M:%S')}] {message}")
        except OSError:
            pass

    def _create_demo_keys(self) -> None:
        if not (REPO / "command_service" / "api_keys.py").exists():
            self.say("demo API keys: command_service/api_keys.py does not exist yet; skipped")
            return
        base = [sys.executable, "-m", "command_service.api_keys", "create"]
        runs = [["--client-id", "client-A"], ["--client-id", "client-B"]]
        try:
            helptext = subprocess.run(base + ["--help"], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60).stdout
        except Exception:  # noqa: BLE001
            helptext = ""
        if "--admin" in helptext:
            runs.append(["--client-id", "admin", "--admin"])
        elif "--kind" in helptext:
            runs.append(["--client-id", "admin", "--kind", "admin"])
        created: dict[str, str] = {}
        for args in runs:
            if self.stopping:
                return
            try:
                r = subprocess.run(base + args, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60)
                out = (r.stdout + r.stderr).strip()
                status = "" if r.returncode == 0 else f" (failed, exit {r.returncode})"
                found = re.search(r"\b(exk_[A-Za-z0-9_\-]+)", r.stdout) if r.returncode == 0 else None
                if found:
                    created[args[1]] = found.group(1)
            except Exception as exc:  # noqa: BLE001
                out, status = str(exc), " (failed)"
            # Keys are shown once, on the terminal, and stored only in demo-keys.env (mode 600):
            # stack.log gets the line with the key masked.
            text = f"demo API key {' '.join(args)}{status}:\n" + "\n".join("    " + line for line in out.splitlines())
            print(f"[stack {time.strftime('%H:%M:%S')}] {text}", flush=True)
            self.log_only(re.sub(r"\bexk_[A-Za-z0-9_\-]+", "exk_... (shown on the terminal)", text))
        if created:
            path = write_demo_keys(self.cfg, created)
            self.say(f"demo keys written to .state/{self.cfg.profile}/{path.name} ({path}, mode 600); "
                     f"load them into a shell: . .state/{self.cfg.profile}/{path.name}")

    def shutdown(self) -> None:
        # Gateway first (no new requests), then the command service (its in-flight batches commit and
        # answer), then the relay (it can still publish the last commits), then the query replicas
        # (they can still project them); the servers they all use go last.
        order = ["gateway", "command", "command-2", "relay", "query-1", "query-2", "prometheus"]
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


def _log_max_bytes() -> int:
    raw = os.environ.get("EXCHANGE_LOG_MAX_BYTES", "")
    try:
        return int(raw) if raw.strip() else 50_000_000
    except ValueError:
        raise StackError(f"EXCHANGE_LOG_MAX_BYTES must be a whole number of bytes, got {raw!r}") from None


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




def write_demo_keys(cfg: StackConfig, keys: dict[str, str]) -> Path:
    """STATE/demo-keys.env (linked as .state/<profile>/demo-keys.env), readable only by its owner:
    `export` lines a shell sources (`. .state/run/demo-keys.env`): A, B, ADMIN and EXCHANGE_URL."""
    names = {"client-A": "A", "client-B": "B", "admin": "ADMIN"}
    lines = [f"# demo API keys of the `make run` started {time.strftime('%Y-%m-%d %H:%M:%S')}; "
             f"keys are shown once and stored hashed",
             f"export EXCHANGE_URL={shlex.quote(cfg.gateway_url)}"]
    for client, key in keys.items():
        var = names.get(client, re.sub(r"\W", "_", client).upper())
        lines.append(f"export {var}={shlex.quote(key)}")
    path = cfg.state_dir / "demo-keys.env"
    tmp = path.with_suffix(".tmp")
    # Created 0600 from the start (never readable by others, not even briefly), then renamed in place.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
