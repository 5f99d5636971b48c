"""contracts.auth.Authenticator: the one key -> principal cache both services use (pure: the lookup is a dict)."""

import asyncio

import pytest

from contracts.api import ApiError
from contracts.auth import OPEN, Authenticator, hash_api_key


class Keys:
    def __init__(self, rows: dict[str, tuple[str, str]]):
        self.rows = {hash_api_key(k): v for k, v in rows.items()}
        self.lookups = 0

    async def __call__(self, key_hash: bytes):
        self.lookups += 1
        return self.rows.get(key_hash)

    def revoke(self, key: str) -> None:
        del self.rows[hash_api_key(key)]


def run(coro):
    return asyncio.run(coro)


def test_a_key_maps_to_its_client_and_scope_and_is_looked_up_once_within_the_ttl():
    keys = Keys({"k-a": ("client-A", "trader"), "k-r": ("client-R", "read"), "k-x": ("ops", "admin")})
    auth = Authenticator(keys, enabled=True, ttl=30)
    a = run(auth.authenticate("Bearer k-a"))
    assert (a.client_id, a.scope, a.is_admin) == ("client-A", "trade", False)
    assert run(auth.authenticate("Bearer k-a")) == a and keys.lookups == 1
    assert run(auth.principal_for_key("k-r")).scope == "read"
    assert run(auth.principal_for_key("k-x")).is_admin
    with pytest.raises(ApiError) as e:
        run(auth.principal_for_key("k-r")).require_trade()
    assert (e.value.status, e.value.code) == (403, "insufficient_scope")


def test_missing_unknown_and_revoked_keys_are_401_and_revocation_takes_effect_after_the_ttl():
    keys = Keys({"k-a": ("client-A", "trader")})
    auth = Authenticator(keys, enabled=True, ttl=0.05, negative_ttl=0.05)
    for header in (None, "", "Basic k-a", "Bearer "):
        with pytest.raises(ApiError) as e:
            run(auth.authenticate(header))
        assert (e.value.status, e.value.code) == (401, "unauthorized")
    with pytest.raises(ApiError):
        run(auth.authenticate("Bearer nope"))
    run(auth.authenticate("Bearer k-a"))
    keys.revoke("k-a")
    assert run(auth.identify("k-a")) is not None  # cached
    run(asyncio.sleep(0.06))
    assert run(auth.identify("k-a")) is None
    with pytest.raises(ApiError):
        run(auth.authenticate("Bearer k-a"))


def test_the_cache_stays_bounded_under_a_flood_of_unknown_keys():
    keys = Keys({})
    auth = Authenticator(keys, enabled=True)
    auth.MAX_ENTRIES = 1_000
    for i in range(5_000):
        assert run(auth.identify(f"flood-{i}")) is None
    assert len(auth._cache) <= 1_000


def test_reading_another_clients_data_is_403_unless_admin_and_disabled_auth_trusts_the_parameter():
    keys = Keys({"k-a": ("client-A", "trader"), "k-x": ("ops", "admin")})
    auth = Authenticator(keys, enabled=True)
    assert run(auth.require_client("Bearer k-a", None)) == "client-A"
    assert run(auth.require_client("Bearer k-x", "client-A")) == "client-A"
    with pytest.raises(ApiError) as e:
        run(auth.require_client("Bearer k-a", "client-B"))
    assert (e.value.status, e.value.code, e.value.field) == (403, "forbidden", "client_id")
    off = Authenticator(keys, enabled=False)
    assert run(off.authenticate(None)) is OPEN
    assert run(off.require_client(None, "client-B")) == "client-B"
    with pytest.raises(ApiError) as e:
        run(off.require_client(None, None))
    assert (e.value.status, e.value.field) == (400, "client_id")
