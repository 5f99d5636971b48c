"""API keys CLI: `python -m command_service.api_keys create --client-id client-A [--scope read|trade|admin]`
(`--admin` = `--scope admin`), `list`, `revoke <key-prefix-hash>`. The key is printed once; only
its sha256 is stored. Scopes: read (own orders, fills, positions, the orders channel), trade
(read + place/cancel/amend), admin."""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import asyncpg

from contracts.auth import hash_api_key, new_api_key


async def create(dsn: str, client_id: str, admin: bool, label: str | None, key: str | None = None,
                 scope: str | None = None) -> str:
    key = key or new_api_key()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO api_keys (key_hash, client_id, kind, label) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (key_hash) DO NOTHING",
            hash_api_key(key), client_id, scope or ("admin" if admin else "trade"), label,
        )
    finally:
        await conn.close()
    return key


async def list_keys(dsn: str) -> list[dict]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT key_hash, client_id, kind, label, created_at, revoked_at FROM api_keys"
                                " ORDER BY created_at")
    finally:
        await conn.close()
    return [{"id": bytes(r["key_hash"]).hex()[:16], "client_id": r["client_id"], "kind": r["kind"],
             "label": r["label"], "created_at": r["created_at"].isoformat(),
             "revoked": r["revoked_at"] is not None} for r in rows]


async def revoke(dsn: str, key_id: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        res = await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE encode(key_hash, 'hex') LIKE $1"
                                 " AND revoked_at IS NULL", key_id.lower() + "%")
    finally:
        await conn.close()
    return int(res.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m command_service.api_keys", description=__doc__)
    p.add_argument("--dsn", default=os.environ.get("EXCHANGE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/exchange"))
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="create a key and print it (shown once)")
    c.add_argument("--client-id", required=True)
    c.add_argument("--admin", action="store_true", help="an admin key (snapshots, settlement, any client)")
    c.add_argument("--scope", choices=["read", "trade", "admin"], help="read, trade (default) or admin")
    c.add_argument("--label")
    c.add_argument("--json", action="store_true", help="print {client_id, key, kind} as JSON")
    sub.add_parser("list", help="list keys (never the keys themselves)")
    r = sub.add_parser("revoke", help="revoke by the id shown in `list`")
    r.add_argument("key_id")
    a = p.parse_args()
    if a.cmd == "create":
        kind = a.scope or ("admin" if a.admin else "trade")
        key = asyncio.run(create(a.dsn, a.client_id, a.admin, a.label, scope=kind))
        print(json.dumps({"client_id": a.client_id, "kind": kind, "key": key}) if a.json
              else f"{kind} key for {a.client_id}: {key}")
    elif a.cmd == "list":
        for k in asyncio.run(list_keys(a.dsn)):
            print(json.dumps(k))
    else:
        print(f"revoked {asyncio.run(revoke(a.dsn, a.key_id))} key(s)")


if __name__ == "__main__":
    main()
