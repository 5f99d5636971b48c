"""Apply db/migrations/*.sql in order, once each: `python -m db.migrate [DSN]`.

Each migration runs in its own transaction together with its row in schema_migrations,
so a crash half-way leaves either all of it or none of it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/exchange"


async def migrate(dsn: str, upto: str | None = None) -> list[str]:
    """Apply the pending migrations in name order (only those <= `upto` when given: tests
    build an old schema to migrate from)."""
    conn = await asyncpg.connect(dsn)
    try:
        # Two migrators at once (e.g. two services starting) must not both apply a file.
        await conn.execute("SELECT pg_advisory_lock(742001)")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        applied = []
        for path in sorted(MIGRATIONS.glob("*.sql")):
            if path.name in done:
                continue
            if upto is not None and path.name > upto:
                break
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations(name) VALUES ($1)", path.name)
            applied.append(path.name)
        return applied
    finally:
        await conn.close()


def main() -> None:
    dsn = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("EXCHANGE_PG_DSN", DEFAULT_DSN)
    applied = asyncio.run(migrate(dsn))
    print(f"migrate: {len(applied)} applied" + (f" ({', '.join(applied)})" if applied else ", up to date"))


if __name__ == "__main__":
    main()
