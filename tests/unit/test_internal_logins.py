"""The NATS login settings (issue 20) and the local stack's credentials file, without servers."""

from __future__ import annotations

import json
import os
import stat

import pytest

from contracts.env import Login, SettingError, env_login, nats_login_kwargs
from ops.stack import config as stack_config

U, P = "EXCHANGE_NATS_QUERY_USER", "EXCHANGE_NATS_QUERY_PASSWORD"


def test_no_password_means_no_login():
    assert env_login(U, P, "query", {}) == Login("", "")
    assert env_login(U, P, "query", {U: "someone"}) == Login("", "")
    assert nats_login_kwargs(Login("", "")) == {}


def test_a_login_sets_user_password_and_the_users_own_inbox():
    login = env_login(U, P, "query", {P: "s3cret-_x"})
    assert login == Login("query", "s3cret-_x")
    assert nats_login_kwargs(login) == {"user": "query", "password": "s3cret-_x", "inbox_prefix": "_INBOX.query"}
    assert env_login(U, P, "query", {P: "pw", U: "query-2"}).user == "query-2"


@pytest.mark.parametrize("user", ["two words", "a/b", "x" * 65, "é"])
def test_a_bad_user_is_named(user):
    with pytest.raises(SettingError) as info:
        env_login(U, P, "query", {P: "pw", U: user})
    assert str(info.value).startswith(f"{U}=")


@pytest.mark.parametrize("password", [" padded", "tab\there", "new\nline", "ünïcode"])
def test_a_bad_password_is_named_and_never_shown(password):
    with pytest.raises(SettingError) as info:
        env_login(U, P, "query", {P: password})
    assert P in str(info.value) and password.strip() not in str(info.value)


def test_the_credentials_file_is_created_once_mode_600_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("EXCHANGE_STATE_BASE", str(tmp_path))
    cfg = stack_config("test")
    first = cfg.credentials
    path = cfg.state_dir / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len({first.pg_password, first.redis_password, first.nats_command_password, first.nats_query_password,
                first.nats_relay_password}) == 5
    assert stack_config("test").credentials == first  # read back, not regenerated
    assert f":{first.pg_password}@" in cfg.pg_dsn and f":{first.redis_password}@" in cfg.redis_url
    os.chmod(path, 0o644)  # loosened by hand: tightened again on the next read
    assert stack_config("test").credentials == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_credentials_file_from_before_the_relay_login_gains_it_and_keeps_the_rest(tmp_path, monkeypatch):
    """State folders made before the relay logged in to NATS: its password is added, nothing else moves
    (PostgreSQL's data folder and running servers keep the passwords they were given)."""
    monkeypatch.setenv("EXCHANGE_STATE_BASE", str(tmp_path))
    cfg = stack_config("test")
    first = cfg.credentials
    path = cfg.state_dir / "credentials.json"
    old = json.loads(path.read_text())
    del old["nats_relay_password"]
    path.write_text(json.dumps(old))
    again = stack_config("test").credentials
    assert again.nats_relay_password and again.nats_relay_password not in old.values()
    assert {k: v for k, v in vars(again).items() if k != "nats_relay_password"} == old
    assert stack_config("test").credentials == again  # written down, not generated on every read
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.pg_password == again.pg_password
