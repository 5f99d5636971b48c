"""Logs rotate by size while the processes keep writing (issue 18): the supervisor copies a full
log to <name>.1 and truncates it; a writer holding the file open (O_APPEND, like every service's
stdout) goes on at the start of the emptied file."""

from __future__ import annotations

import pytest

from ops.stack.config import StackError, config
from ops.stack.supervisor import Supervisor, _log_max_bytes


def test_a_full_log_is_rotated_and_the_writer_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("EXCHANGE_STATE_BASE", str(tmp_path))
    monkeypatch.setenv("EXCHANGE_LOG_MAX_BYTES", "1000")
    cfg = config("test")
    cfg.logs.mkdir(parents=True)
    sup = Supervisor(cfg, [], lambda _msg: None)
    log = cfg.logs / "command.log"
    small = cfg.logs / "relay.log"
    small.write_text("short\n")
    with open(log, "ab", buffering=0) as writer:  # what a service's stdout is
        writer.write(b"x" * 1500)
        sup._rotate_logs(now=100.0)
        writer.write(b"after rotation\n")
    assert (cfg.logs / "command.log.1").read_bytes() == b"x" * 1500
    assert log.read_bytes() == b"after rotation\n"
    assert small.read_text() == "short\n" and not (cfg.logs / "relay.log.1").exists()
    # checked at most every LOG_CHECK_S
    log.write_bytes(b"y" * 2000)
    sup._rotate_logs(now=101.0)
    assert log.stat().st_size == 2000
    sup._rotate_logs(now=100.0 + Supervisor.LOG_CHECK_S)
    assert log.stat().st_size == 0


def test_a_bad_size_stops_with_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("EXCHANGE_LOG_MAX_BYTES", "50MB")
    with pytest.raises(StackError, match="EXCHANGE_LOG_MAX_BYTES"):
        _log_max_bytes()
