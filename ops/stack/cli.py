"""The commands of `python -m ops.stack` (install, up, with-servers, down, env, status, gateway)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Callable

from ops.stack.config import (
    ALL_SERVICES,
    PROFILES,
    REPO,
    SERVERS,
    SERVICES,
    StackConfig,
    StackError,
    config,
    exchange_env,
    service_env,
)
from ops.stack.processes import (
    _alive,
    _become_subreaper,
    _listener,
    _marker,
    _pid_if_ours,
    _reap_all,
    _reap_zombie_children,
    port_open,
    stop_process,
)
from ops.stack.servers import (
    _answers,
    cmd_install,
    ensure_servers,
    ensure_state_dir,
    server_pid,
    start_gateway,
    stop_redis_cluster,
    stop_server,
)
from ops.stack.supervisor import Supervisor, _ports_of, _wait_ports_free, append_stack_log

# --------------------------------------------------------------------------- commands


def _say_factory(cfg: StackConfig | None) -> Callable[[str], None]:
    def say(message: str) -> None:
        line = f"[stack {time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        if cfg is not None:
            try:
                append_stack_log(cfg, line)
            except OSError:
                pass

    return say








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
        say(f"servers of profile {cfg.profile} are up; `python -m ops.stack env --profile {cfg.profile}` prints their env")
        return 0
    # Servers this run found running stay running when it stops; the ones it started, it stops.
    rc = Supervisor(cfg, started, say).run()
    _reap_all()
    return rc


def cmd_with_servers(cfg: StackConfig, command: list[str], fresh: bool = False) -> int:
    """Start the servers, run COMMAND with the profile's env exported, stop the servers (always),
    exit with COMMAND's code. The servers are our children, so they are reaped when stopped."""
    if not command:
        print("[stack] with-servers: no command given (python -m ops.stack with-servers --profile test -- CMD ...)", file=sys.stderr)
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




def cmd_down(cfg: StackConfig) -> int:
    say = _say_factory(cfg if cfg.state_dir.exists() else None)
    stopped: list[str] = []
    sup = _pid_if_ours(cfg.pid_path("supervisor"), "stack")
    if sup:
        # What it runs now, to check their ports afterwards (it stops them itself, in its order).
        stopped += [n for n in ("gateway", *ALL_SERVICES, "prometheus") if _pid_if_ours(cfg.pid_path(n), _marker(n))]
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
    for name in ("gateway", "command", "command-2", "relay", "query-1", "query-2", "prometheus"):
        pid = _pid_if_ours(cfg.pid_path(name), _marker(name))
        if pid:
            stop_process(pid)
            say(f"{name}: stopped (pid {pid})")
            stopped.append(name)
        cfg.pid_path(name).unlink(missing_ok=True)
    stop_redis_cluster(cfg, say)
    for name in reversed(SERVERS):
        if stop_server(cfg, name, say):
            stopped.append(name)
    stopped = list(dict.fromkeys(stopped))
    busy = _wait_ports_free(cfg, stopped)
    if busy:
        say("FAILED: still in use after stopping: " + ", ".join(busy))
        return 1
    others = [f"{name} port {p} ({_listener(p)})" for p, name in _ports_of(cfg, list(SERVERS) + ["gateway", *SERVICES, "prometheus"]).items()
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
        for name in ("gateway", *cfg.services, "prometheus"):
            pid = _pid_if_ours(cfg.pid_path(name), _marker(name))
            port = cfg.service_port(name)
            listening = port_open(port, cfg.host)
            state = ("listening" if listening else "not listening") if pid else (
                f"port busy: {_listener(port)} (not ours)" if listening else "down")
            print(f"  {name:<11} {'pid ' + str(pid) if pid else '-':<12} {cfg.host}:{port:<6} {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.stack", description=__doc__.split("\n\n")[0])
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
    sub.add_parser("nats-compose-conf", help="write ops/nats.compose.conf (compose's NATS users and permissions)")
    p_status = sub.add_parser("status", help="what runs, for one or both profiles")
    p_status.add_argument("--profile", choices=PROFILES)
    args = parser.parse_args(argv)

    if args.cmd == "install":
        return cmd_install()
    if args.cmd == "nats-compose-conf":
        from ops.stack.servers import COMPOSE_NATS_CONF, render_compose_nats_conf

        COMPOSE_NATS_CONF.write_text(render_compose_nats_conf())
        print(f"[stack] wrote {COMPOSE_NATS_CONF}")
        return 0
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
