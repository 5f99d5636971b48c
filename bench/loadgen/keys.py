"""Create API keys for an authenticated benchmark and write the --api-keys-file JSON.

    python -m bench.loadgen.keys --clients 100 --out /tmp/bench-keys.json [--dsn postgresql://...]
    python -m bench.loadgen --api-keys-file /tmp/bench-keys.json ...

Keys go through command_service.api_keys.create (only their hash is stored). The file maps
client_id -> key, so it holds secrets: it is written with mode 0600.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path


async def create_keys(dsn: str, client_ids: list[str], label: str) -> dict[str, str]:
    from command_service.api_keys import create

    keys = {}
    for cid in client_ids:
        keys[cid] = await create(dsn, cid, False, label)
    return keys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen.keys", description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=os.environ.get("EXCHANGE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/exchange"))
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--client-prefix", default="lg", help="client ids are PREFIX-000, PREFIX-001, ... as in bench.loadgen")
    p.add_argument("--label", default="loadgen")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    ids = [f"{a.client_prefix}-{i:03d}" for i in range(a.clients)]
    keys = asyncio.run(create_keys(a.dsn, ids, a.label))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f, indent=1)
    print(f"{len(keys)} keys -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
