"""GET /market/settlements: a client's end-of-day settlement records, newest first.

Settlement runs on the command side against the journal and is written once to
PostgreSQL; this reads those rows through the query service's read-only pool."""

from __future__ import annotations

from litestar import Request, Response, get

from contracts.api import json_encoder
from contracts.settlement import settlement_view
from query_service import params


@get("/market/settlements")
async def settlements(request: Request) -> Response:
    s = request.app.state.services
    q = request.query_params
    spec = params.optional_instrument(s.instruments, q.get("instrument"))
    limit = params.integer(q.get("limit"), "limit", 50, 1, 500)
    client = await s.auth.require_client(request.headers.get("authorization"), q.get("client_id"))
    rows = await s.journal._pool().fetch(
        "SELECT * FROM settlements WHERE client_id = $1 AND ($2::text IS NULL OR instrument = $2)"
        " ORDER BY cutoff_ts DESC, instrument LIMIT $3",
        client, spec.symbol if spec else None, limit)
    body = {"client_id": client, "settlements": [settlement_view(r) for r in rows]}
    return Response(content=json_encoder.encode(body), media_type="application/json")
