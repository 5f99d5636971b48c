"""The query side's API-key lookup (read-only, on the replica's pool) for contracts.auth.Authenticator."""

from __future__ import annotations

from contracts.api import ApiError
from contracts.auth import Authenticator, KeyLookup
from query_service.journal import JournalReader


def key_lookup(journal: JournalReader) -> KeyLookup:
    async def lookup(key_hash: bytes) -> tuple[str, str] | None:
        try:
            row = await journal._pool().fetchrow(
                "SELECT client_id, kind FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
            )
        except Exception:
            raise ApiError(503, "unavailable", "cannot check the api key right now") from None
        return (row[0], row[1]) if row else None

    return lookup


def authenticator(journal: JournalReader, enabled: bool, ttl: float) -> Authenticator:
    return Authenticator(key_lookup(journal), enabled, ttl)
