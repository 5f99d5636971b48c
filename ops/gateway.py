"""The nginx gateway: render ops/nginx.conf.template and run nginx on it.

One template serves both deployments, so the local gateway and the compose one route the same paths:
- local: `render_gateway_conf(...)` into a state folder, nginx started as our own process
  (`nginx -p PREFIX -c CONF -e ERRLOG -g 'daemon off;'`), pid, logs and temp paths under that folder;
- compose: `python -m ops.gateway compose` rewrites ops/nginx.compose.conf (checked by a unit test).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

OPS = Path(__file__).resolve().parent
WEB_DIST = OPS.parent / "web" / "dist"  # the trading page, built by `make web` (npm run build)
COMPOSE_WEB_ROOT = "/usr/share/nginx/html"
TEMPLATE = OPS / "nginx.conf.template"
COMPOSE_CONF = OPS / "nginx.compose.conf"
MAX_BODY = "64k"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def render_gateway_conf(
    *,
    listen: str,
    command_servers: list[str],
    query_servers: list[str],
    pid_path: str,
    error_log: str,
    access_log: str,
    temp_dir: str,
    worker_processes: str = "auto",
    user: str | None = None,
    max_body: str = MAX_BODY,
    web_root: str = COMPOSE_WEB_ROOT,
) -> str:
    """The nginx.conf text. Servers are "host:port" strings."""

    def servers(addrs: list[str]) -> str:
        # max_fails/fail_timeout: a dead replica is skipped for 2 s instead of being retried on every request.
        return "\n".join(f"        server {a} max_fails=1 fail_timeout=2s;" for a in addrs)

    text = TEMPLATE.read_text()
    values = {
        "@@USER@@": f"user {user};" if user else "",
        "@@WORKER_PROCESSES@@": worker_processes,
        "@@PID_PATH@@": pid_path,
        "@@ERROR_LOG@@": error_log,
        "@@ACCESS_LOG@@": access_log,
        "@@TEMP_DIR@@": temp_dir,
        "@@MAX_BODY@@": max_body,
        "@@WEB_ROOT@@": web_root,
        "@@LISTEN@@": listen,
        "@@COMMAND_SERVERS@@": servers(command_servers),
        "@@QUERY_SERVERS@@": servers(query_servers),
    }
    for key, value in values.items():
        text = text.replace(key, value)
    if "@@" in text:
        raise ValueError("unrendered placeholder left in nginx template")
    return text


def render_compose_conf() -> str:
    """The gateway config of compose.yaml (container paths, compose service names)."""
    return render_gateway_conf(
        listen="3000",
        command_servers=["command-1:8001", "command-2:8001"],  # the command nodes (issue 14)
        query_servers=["query-1:8002", "query-2:8003"],
        pid_path="/var/run/nginx.pid",
        error_log="/dev/stderr",
        access_log="/dev/stdout",
        temp_dir="/var/cache/nginx",
    )


def write_local_conf(
    state_dir: Path, *, listen_port: int, command_ports: list[int], query_ports: list[int], host: str = "127.0.0.1"
) -> Path:
    """Render the local gateway config into STATE/nginx/nginx.conf; returns its path."""
    prefix = state_dir / "nginx"
    temp = prefix / "temp"
    logs = state_dir / "logs"
    for d in (prefix, temp, logs):
        d.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    web_root = install_page(prefix / "web")
    conf.write_text(
        render_gateway_conf(
            listen=f"{host}:{listen_port}",
            command_servers=[f"{host}:{p}" for p in command_ports],
            query_servers=[f"{host}:{p}" for p in query_ports],
            pid_path=str(prefix / "nginx.pid"),
            error_log=str(logs / "gateway-error.log"),
            access_log=str(logs / "gateway-access.log"),
            temp_dir=str(temp),
            web_root=str(web_root),
        )
    )
    return conf


def install_page(target: Path, dist: Path = WEB_DIST) -> Path:
    """Copy the built page into the state folder and return it. nginx's workers run as `nobody`,
    who may not enter the checkout (root's home is mode 700); the state folder is readable."""
    tmp = target.with_name(target.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    if (dist / "index.html").exists():
        shutil.copytree(dist, tmp)
    else:
        tmp.mkdir(parents=True)
        (tmp / "index.html").write_text(
            "<!doctype html><title>Exchange</title><p>The trading page is not built: run <code>make web</code> "
            "(or <code>make run</code>), then reload.</p>\n"
        )
    for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        d.chmod(0o755)
    for f in (p for p in tmp.rglob("*") if p.is_file()):
        f.chmod(0o644)
    # Swap in one rename, so a running gateway never serves a half-copied folder.
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def nginx_argv(conf: Path) -> list[str]:
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (make install)")
    prefix = conf.parent
    # -e: the error log before the config is read (nginx otherwise opens its compiled-in default path).
    return [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "startup-error.log"), "-g", "daemon off;"]


def check_conf(conf: Path) -> subprocess.CompletedProcess:
    argv = nginx_argv(conf)
    return subprocess.run(argv[:-2] + ["-t", "-q"], capture_output=True, text=True, timeout=30)


def main() -> None:
    if sys.argv[1:] == ["compose"]:
        COMPOSE_CONF.write_text(render_compose_conf())
        print(f"wrote {COMPOSE_CONF}")
    else:
        print("usage: python -m ops.gateway compose   (rewrite ops/nginx.compose.conf from the template)")
        sys.exit(2)


if __name__ == "__main__":
    main()
