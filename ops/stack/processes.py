"""Pid files, ports, logs and stopping processes: only our own, by pid, never by name."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ops.stack.config import HOST, REPO, SERVICE_MODULES, STOP_TIMEOUT

# --------------------------------------------------------------------------- processes


# Popen objects of the processes this Python process started, so it can reap them (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


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


def _marker(name: str) -> str:
    if name in ("gateway", "prometheus"):
        return "nginx" if name == "gateway" else "prometheus"
    return SERVICE_MODULES[name]


def free_port(host: str = HOST) -> int:
    """A port the kernel says is free now (tests and benchmarks start their own processes on it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def http_status(url: str, timeout: float = 1.0) -> int | None:
    """Status code of a GET (standard library only, so `make stop` never needs the venv); None if
    nothing answered in time."""
    rest = url.split("://", 1)[-1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        try:
            writer.write(f"GET /{path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
            line = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
        return int(line.split()[1])
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        return None


class ServiceProcess:
    """`python -m <module>` started by a test or a benchmark with its own env and log, stopped by
    its own pid (never by name). The one process wrapper outside the stack's supervisor."""

    def __init__(self, module: str, port: int, env: dict | None = None, port_var: str = "EXCHANGE_COMMAND_PORT",
                 log_name: str | None = None, log_path: Path | None = None):
        self.module = module
        self.port = port
        self.env = {**os.environ, port_var: str(port), **{k: str(v) for k, v in (env or {}).items()}}
        self.proc: subprocess.Popen | None = None
        self.log_path = log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"{log_name or module}-{port}.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> "ServiceProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module], cwd=REPO, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def log(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    async def wait_ready(self, timeout: float = 30.0, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log())
            if await http_status(self.url + path) == 200:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.module} on {self.port} not ready after {timeout}s; see {self.log_path}")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
