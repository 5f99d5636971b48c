"""The command service's complete OpenAPI document: Litestar's, generated from the handlers
(paths, path and query parameters, operation ids), plus what it cannot see:
- the JSON bodies of the routes that decode raw bytes themselves (to keep numbers exact);
- the answers: success body and every error status each route gives (contracts.schemas);
- the bearer security scheme.
Served at GET /openapi.json, /schema/openapi.json and /docs/command.openapi.json."""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from contracts import schemas

ALL_AUTH = (401, 429, 503)  # any route that needs a key: no/bad key, rate limit, recovering

# (path, method) -> (success status, success schema, error statuses, needs a key, description)
OPERATIONS: dict[tuple[str, str], tuple[int, str, tuple[int, ...], bool, str]] = {
    ("/orders", "post"): (
        201, "PlaceOrderResponse", (400, 401, 403, 409, 413, 415, 429, 503), True,
        "Answered after the order is committed: the order, the trades it made, and the top of the book. "
        "An order that cannot be accepted as asked (FOK not fully fillable, post-only that would cross) is "
        "answered 201 with status `rejected` and a `reject_reason`. Send an `idempotency_key` so that a retry "
        "after a timeout returns the original answer (header `Idempotent-Replayed: true`) instead of placing "
        "a second order."),
    ("/orders/cancel-all", "post"): (
        200, "CancelAllResponse", (400, 401, 403, 413, 415, 429, 503), True,
        "Cancels the key's open orders of one `instrument` (optionally one `side`), or with `\"all\": true` "
        "on every instrument; a body with neither cancels nothing (400 `missing_field` `all`). 503 with "
        "`unavailable_instruments` when some instrument could not commit now."),
    ("/orders/{order_id}/cancel", "post"): (
        200, "OrderResponse", (400, 401, 403, 404, 409, 415, 429, 503), True,
        "409 `order_closed` when the order is already filled, cancelled or rejected; 404 for an unknown order "
        "and for another client's (the same answer)."),
    ("/orders/{order_id}/amend", "post"): (
        200, "PlaceOrderResponse", (400, 401, 403, 404, 409, 413, 415, 429, 503), True,
        "`quantity` is the new total (must exceed the filled quantity), `price` the new limit. A pure decrease "
        "keeps time priority; a price change or an increase re-enters at the back and may trade. 404 for an "
        "unknown order and for another client's (the same answer); 409 `order_closed`, 409 "
        "`post_only_would_cross` (the order stays as it was)."),
    ("/orders/cancel-after", "post"): (
        200, "CancelAfterResponse", (400, 401, 403, 413, 415, 429, 503), True,
        "Dead man's switch: unless called again within `timeout_ms`, every open order of the key's client on "
        "every instrument is cancelled (reason `cancel_after`); 0 turns it off. Kept in the service's memory."),
    ("/orders/{order_id}", "get"): (
        200, "OrderResponse", (400, 401, 404, 429, 503), True,
        "The order as committed (authoritative); 404 for an unknown order and for another client's (the same "
        "answer)."),
    ("/admin/snapshot", "post"): (
        201, "SnapshotResponse", (400, 401, 403, 429, 503), True,
        "Stores an engine snapshot of every instrument (or one) now; recovery = snapshot + later journal."),
    ("/admin/handover", "post"): (
        200, "HandoverResponse", (400, 401, 403, 409, 429, 503), True,
        "Several nodes: moves one instrument off the node that owns it (drain, snapshot, release); the node "
        "rendezvous hashing picks among the other live nodes takes it and recovers from that snapshot. "
        "Served by any node. 409 `no_other_node` when no other live node serves the instrument."),
    ("/admin/settlement", "post"): (
        201, "SettlementResponse", (400, 401, 403, 413, 415, 429, 503), True,
        "Nets every client's trades per instrument since the previous run up to `cutoff` (default now)."),
    ("/healthz", "get"): (200, "Health", (503,), False, "The command service's own dependencies."),
}


def _decimal_inputs(schema: Any) -> Any:
    """msgspec writes a Decimal as a decimal string; the API takes a JSON number too."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and schema.get("format") == "decimal":
            return copy.deepcopy(schemas.DEC_IN)
        return {k: _decimal_inputs(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_decimal_inputs(v) for v in schema]
    return schema


def complete(doc: dict, bodies: dict[tuple[str, str], type]) -> dict:
    """Litestar's generated document (doc) + request bodies + answers + security."""
    refs, components = msgspec.json.schema_components(list(bodies.values()),
                                                      ref_template="#/components/schemas/{name}")
    comps = doc.setdefault("components", {})
    comps.setdefault("schemas", {}).update(_decimal_inputs(components))
    comps["schemas"].update({name: copy.deepcopy(schemas.COMPONENTS[name]) for name in sorted(
        {"Error", "Order", "Trade", "BookLevel", *(schema for _, schema, *_ in OPERATIONS.values())})})
    comps["securitySchemes"] = copy.deepcopy(schemas.BEARER)
    doc["info"]["description"] = (
        "Write side of the exchange: order entry, cancels, admin. Through the gateway every path here is "
        "served on the same origin as the query API. Prices and quantities are exact decimals: send a JSON "
        "number or a decimal string; answers carry JSON numbers to parse as decimals. Errors: "
        "`{\"error\": {code, message, field}}`, every code in docs/ERRORS.md. Order entry over WebSocket "
        "(/ws) and the live feed (/stream): the AsyncAPI document at /docs/asyncapi.json.")
    for (path, method), ref in zip(bodies, refs):
        op = doc.get("paths", {}).get(path, {}).get(method)
        if op is not None:
            op["requestBody"] = {"required": path == "/orders", "content": {"application/json": {"schema": ref}}}
    for (path, method), (ok, schema, errors, secured, description) in OPERATIONS.items():
        op = doc.get("paths", {}).get(path, {}).get(method)
        if op is None:
            continue
        op["responses"] = schemas.responses(ok, schema, errors, "Created" if ok == 201 else "OK")
        op["description"] = description
        if secured:
            op["security"] = [{"bearer": []}]
    return doc
