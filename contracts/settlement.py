"""The settlement record as the API shows it (written by the command side, read by the query side)."""

from collections.abc import Mapping
from typing import Any

from contracts.api import iso_ms
from contracts.instruments import plain


def settlement_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A `settlements` row (mapping) -> API record with exact decimals."""
    return {
        "instrument": row["instrument"], "client_id": row["client_id"],
        "from_seq": row["from_seq"], "to_seq": row["to_seq"], "cutoff": iso_ms(row["cutoff_ts"]),
        "net_quantity": plain(row["net_base"]), "net_quote": plain(row["net_quote"]),
        "bought_quantity": plain(row["bought"]), "sold_quantity": plain(row["sold"]),
        "trade_count": row["trade_count"], "created_at": iso_ms(int(row["created_at"].timestamp() * 1e9)),
    }
