#!/usr/bin/env python3
"""Start, supervise and stop the local exchange stack.

    python -m ops.stack install                          apt packages for PostgreSQL, Redis, NATS, nginx
    python -m ops.stack up --profile run|test [--servers-only] [--fresh]
    python -m ops.stack with-servers --profile test [--fresh] -- CMD ...   (make test: up, CMD, down always)
    python -m ops.stack down --profile run|test
    python -m ops.stack env --profile run|test           `export EXCHANGE_...=...` lines
    python -m ops.stack status [--profile run|test]
    python -m ops.stack gateway --profile run|test       start only the nginx gateway (idempotent)

Every process is our own: started on 127.0.0.1 with its data, logs and pid file under one state
folder per profile and checkout (/var/tmp/exchange-<profile>-<hash of the repo path>, linked from
.state/<profile>), and stopped by its pid (PostgreSQL by pg_ctl) - never by process name.

Importable for tests: config(), exchange_env(), service_env(), spawn(), stop_process(), start_gateway(),
stop_gateway(), start_server(), stop_server(), server_pid(), ensure_servers(), ensure_topic(), wait_port().
"""

# The public surface, importable as `from ops import stack; stack.config()` (tests, bench).
from ops.stack.config import *  # noqa: E402,F403
from ops.stack.processes import *  # noqa: E402,F403
from ops.stack.processes import _popen  # noqa: E402,F401
from ops.stack.servers import *  # noqa: E402,F403
from ops.stack.servers import _service_overrides, _which  # noqa: E402,F401
from ops.stack.supervisor import Supervisor, write_demo_keys  # noqa: E402,F401
