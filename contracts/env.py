"""Reading settings from the environment: one error type naming the variable, and the parsers
every service's settings loader uses, so a bad value stops a service with one clear line
(`run_main`) instead of a traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable, Mapping, NamedTuple, NoReturn, Sequence, TypeVar

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on", "enabled")
_FALSE = ("0", "false", "no", "off", "disabled")


class SettingError(ValueError):
    """A setting's value is unusable. str() is the one line shown to the operator."""

    def __init__(self, name: str, value: str, expected: str):
        self.name, self.value, self.expected = name, value, expected
        super().__init__(f"{name}={value!r} is not valid: expected {expected}")


def _raw(env: Mapping[str, str] | None, name: str) -> str | None:
    value = (os.environ if env is None else env).get(name)
    return None if value is None or value.strip() == "" else value.strip()


def env_str(name: str, default: str, env: Mapping[str, str] | None = None) -> str:
    value = _raw(env, name)
    return default if value is None else value


def env_int(name: str, default: int, env: Mapping[str, str] | None = None, *, minimum: int | None = None) -> int:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        parsed = int(value)
    except ValueError:
        raise SettingError(name, value, "an integer") from None
    if minimum is not None and parsed < minimum:
        raise SettingError(name, value, f"an integer >= {minimum}")
    return parsed


def env_float(name: str, default: float, env: Mapping[str, str] | None = None, *,
              minimum: float | None = None) -> float:
    value = _raw(env, name)
    if value is None:
        return default
    try:
        parsed = float(value)
    except ValueError:
        raise SettingError(name, value, "a number") from None
    if parsed != parsed or parsed in (float("inf"), float("-inf")):
        raise SettingError(name, value, "a finite number")
    if minimum is not None and parsed < minimum:
        raise SettingError(name, value, f"a number >= {minimum}")
    return parsed


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    value = _raw(env, name)
    if value is None:
        return default
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise SettingError(name, value, "one of " + "|".join(_TRUE + _FALSE))


def env_choice(name: str, default: str, choices: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    value = _raw(env, name)
    if value is None:
        return default
    if value.lower() not in choices:
        raise SettingError(name, value, "one of " + "|".join(choices))
    return value.lower()


def env_port(name: str, default: int, env: Mapping[str, str] | None = None) -> int:
    port = env_int(name, default, env, minimum=0)
    if port > 65535:
        raise SettingError(name, str(port), "a port 0..65535")
    return port


class Login(NamedTuple):
    """A user name and password for an internal server (NATS): both empty = send none."""

    user: str
    password: str


def env_login(user_name: str, password_name: str, default_user: str,
              env: Mapping[str, str] | None = None) -> Login:
    """A login read from two variables (issue 20: internal services authenticate). An empty
    password means no credentials are sent (a server without authentication). The password is
    never echoed in an error line."""
    raw = (os.environ if env is None else env).get(password_name) or ""
    if raw and (raw != raw.strip() or not raw.isprintable() or not raw.isascii()):
        raise SettingError(password_name, "<hidden>", "printable ASCII without surrounding spaces")
    if not raw:
        return Login("", "")
    user = env_str(user_name, default_user, env)
    if len(user) > 64 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in user):
        raise SettingError(user_name, user, "up to 64 letters, digits, '-', '_' or '.'")
    return Login(user, raw)


def nats_login_kwargs(login: Login) -> dict[str, str]:
    """nats.connect keyword arguments for a login (none: the URL's own user:password, if any).
    Request replies arrive under the user's own inbox prefix, the only _INBOX it may subscribe to."""
    from contracts.topics import inbox_prefix

    if not login.password:
        return {}
    return {"user": login.user, "password": login.password, "inbox_prefix": inbox_prefix(login.user)}


def fail_setting(service: str, exc: SettingError) -> NoReturn:
    print(f"{service}: cannot start: {exc}", file=sys.stderr, flush=True)
    sys.exit(2)


def load_or_exit(service: str, loader: Callable[[], T]) -> T:
    """loader() or, on a SettingError, one line on stderr and exit code 2 (no traceback)."""
    try:
        return loader()
    except SettingError as exc:
        fail_setting(service, exc)
