"""exchange_client cannot drift from the served API documents (no I/O):
- every route of the command and query OpenAPI documents (what the gateway serves at
  /docs/command.openapi.json and /docs/query.openapi.json, tests/e2e/test_docs_site.py checks
  they are the same) has a method on both clients, and calling that method sends that route;
- every field the OpenAPI and AsyncAPI documents give as a decimal comes back as a Decimal,
  also when the server writes an integer-looking number (70000, not 70000.0)."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from decimal import Decimal

import httpx
import msgspec
import pytest

from command_service.app import create_app, openapi_document
from contracts import asyncapi, schemas
from contracts.instruments import load_instruments
from exchange_client import AsyncExchangeClient, ExchangeClient, codec, results
from exchange_client.client import ROUTES
from query_service.openapi import document as query_document

COMMAND = openapi_document(create_app())
QUERY = query_document(load_instruments())
ASYNCAPI = asyncapi.document()


def _routes(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops
            if method in ("get", "post", "put", "patch", "delete")}


SERVED = _routes(COMMAND) | _routes(QUERY)

# Arguments for calling each method once (path parameters are filled with "X").
ARGS: dict[str, tuple[tuple, dict]] = {
    "place_order": (("buy", Decimal("1")), {"price": Decimal("100")}),
    "amend_order": (("X",), {"quantity": Decimal("2")}),
    "cancel_order": (("X",), {}),
    "get_order": (("X",), {}),
    "cancel_after": ((1000,), {}),
    "positions": (("X",), {}),
    "admin_handover": (("BTC-USD",), {}),
}


def test_every_served_route_has_a_client_method():
    missing = SERVED - set(ROUTES)
    assert not missing, f"routes without a client method: {sorted(missing)} (add one to exchange_client/client.py)"
    stale = set(ROUTES) - SERVED
    assert not stale, f"client methods for routes no document lists: {sorted(stale)}"
    for cls in (ExchangeClient, AsyncExchangeClient):
        for name in ROUTES.values():
            assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name}"


def _template(path: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)) + "$")


def test_each_method_sends_its_route():
    # A transport that records what was sent: this checks the client's own requests, not a server.
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"{}")

    async def call_async(name, args, kwargs):
        async with AsyncExchangeClient("http://x", "k", transport=httpx.MockTransport(record)) as c:
            return await getattr(c, name)(*args, **kwargs)

    with ExchangeClient("http://x", "k", transport=httpx.MockTransport(record)) as sync:
        for (method, path), name in sorted(ROUTES.items()):
            args, kwargs = ARGS.get(name, ((), {}))
            for use_async in (False, True):
                sent.clear()
                if use_async:
                    asyncio.run(call_async(name, args, kwargs))
                else:
                    getattr(sync, name)(*args, **kwargs)
                assert len(sent) == 1, name
                assert sent[0].method == method and _template(path).match(sent[0].url.path), \
                    f"{name} sent {sent[0].method} {sent[0].url.path}, not {method} {path}"


def test_amend_and_cancel_after_bodies():
    bodies = []

    def record(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, content=b'{"order":{"price":70000,"display_quantity":1}}')

    with ExchangeClient("http://x", "k", transport=httpx.MockTransport(record)) as c:
        r = c.amend_order("o1", price=Decimal("70000.50"))
        assert isinstance(r["order"]["price"], Decimal) and isinstance(r["order"]["display_quantity"], Decimal)
        c.cancel_after(0)
        c.place_order("sell", "1", price="100", time_in_force="GTD", expire_time="2030-01-01T00:00:00Z",
                      display_quantity=Decimal("0.1"), self_trade_prevention="cancel_oldest")
        with pytest.raises(TypeError):
            c.amend_order("o1", quantity=0.5)  # floats are not exact
        with pytest.raises(TypeError):
            c.cancel_after(1.5)  # type: ignore[arg-type]
    assert bodies[0] == {"price": "70000.50"}
    assert bodies[1] == {"timeout_ms": 0}
    assert {k: bodies[2][k] for k in ("time_in_force", "expire_time", "display_quantity", "self_trade_prevention")} \
        == {"time_in_force": "GTD", "expire_time": "2030-01-01T00:00:00Z", "display_quantity": "0.1",
            "self_trade_prevention": "cancel_oldest"}


def _is_decimal(schema) -> bool:
    if not isinstance(schema, dict):
        return False
    if schema.get("type") == "number":
        return True
    return any(isinstance(a, dict) and a.get("type") == "number" for a in schema.get("anyOf", ()))


def _fields(node, decimal: set[str], other: set[str]) -> None:
    """Property names whose schema is a decimal, and the others, anywhere in a document."""
    if isinstance(node, dict):
        for name, schema in (node.get("properties") or {}).items():
            if isinstance(schema, dict):
                (decimal if _is_decimal(schema) else other).add(name)
        for v in node.values():
            _fields(v, decimal, other)
    elif isinstance(node, list):
        for v in node:
            _fields(v, decimal, other)


def test_every_decimal_field_of_the_documents_comes_back_as_a_decimal():
    decimal: set[str] = set()
    other: set[str] = set()
    for doc in (COMMAND, QUERY, ASYNCAPI):
        _fields(doc, decimal, other)
    assert not decimal - codec.DECIMAL_FIELDS, \
        f"decimal fields exchange_client.codec would give as int: {sorted(decimal - codec.DECIMAL_FIELDS)}"
    # a name that is a decimal in one place and e.g. an integer count in another cannot be told apart
    assert not (codec.DECIMAL_FIELDS & other) - decimal, sorted((codec.DECIMAL_FIELDS & other) - decimal)
    for name in sorted(decimal):
        got = codec.loads(json.dumps({"x": [{name: 70000}]}))["x"][0][name]
        assert isinstance(got, Decimal) and got == 70000, name


def test_every_client_method_documents_its_route():
    for (method, path), name in ROUTES.items():
        doc = inspect.getdoc(getattr(ExchangeClient, name)) or ""
        assert path.split("{")[0].rstrip("/") in doc, f"{name}'s docstring should name {method} {path}"


def _object_schema(schema: dict) -> dict | None:
    """The object schema in a property's schema (itself, an array's items, or an anyOf branch)."""
    if schema.get("type") == "object":
        return schema
    if schema.get("type") == "array":
        return _object_schema(schema["items"])
    for branch in schema.get("anyOf", ()):
        found = _object_schema(branch)
        if found is not None:
            return found
    return None


def _check_struct(cls, schema: dict, where: str) -> None:
    props, required = schema["properties"], set(schema.get("required", ()))
    for f in msgspec.structs.fields(cls):
        assert f.name in props, f"{where}.{f.name}: not in the API document's schema"
        if f.required:
            assert f.name in required, f"{where}.{f.name} is required in the Struct, optional in the API"
        inner = [t for t in (f.type, *getattr(f.type, "__args__", ())) if isinstance(t, type)
                 and issubclass(t, msgspec.Struct)]
        if inner:
            sub = _object_schema(props[f.name])
            assert sub is not None, f"{where}.{f.name}"
            _check_struct(inner[0], sub, f"{where}.{f.name}")
    # every decimal of the API is a Decimal in the Struct
    for name, prop in props.items():
        hint = {f.name: f.type for f in msgspec.structs.fields(cls)}.get(name)
        if hint is not None and _is_decimal(prop):
            assert "Decimal" in repr(hint), f"{where}.{name} is {hint!r}, the API's is a decimal"


def test_typed_results_mirror_the_api_schemas():
    for name, (cls, schema_name) in results.RESULTS.items():
        assert name in ROUTES.values(), name
        _check_struct(cls, schemas.COMPONENTS[schema_name], name)


def test_typed_client_returns_structs():
    body = (b'{"order":{"order_id":"o1","client_id":"A","instrument":"BTC-USD","side":"buy","type":"limit",'
            b'"price":70000,"quantity":1,"filled_quantity":0,"status":"open","time_in_force":"GTC",'
            b'"created_at":"t","updated_at":"t","new_field":1},"trades":[]}')
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    with ExchangeClient("http://x", "k", transport=transport, typed=True) as c:
        r = c.amend_order("o1", price=Decimal("70000"))
        assert isinstance(r, results.PlaceResult) and r.order.price == Decimal(70000)
        assert isinstance(r.order.price, Decimal) and r.orderbook is None
        assert isinstance(c.health(), dict)  # no Struct for it: the dict


def test_client_order_ids_are_sent_and_either_id_names_an_order():
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b'{"order":{"order_id":"9f1c","client_order_id":"mine-1"}}')

    with ExchangeClient("http://x", "k", transport=httpx.MockTransport(record)) as c:
        c.place_order("buy", "1", price="100", client_order_id="mine-1")
        c.place_order("buy", "1", price="100", order_id="seed-1")  # the seed API's deprecated alias
        assert c.get_order("mine-1")["order"]["client_order_id"] == "mine-1"
        c.cancel_order("mine-1")
        c.amend_order("mine-1", quantity="2")
    bodies = [json.loads(r.content) for r in sent[:2]]
    assert bodies[0]["client_order_id"] == "mine-1" and "order_id" not in bodies[0]
    assert bodies[1]["order_id"] == "seed-1" and "client_order_id" not in bodies[1]
    assert [r.url.path for r in sent[2:]] == ["/orders/mine-1", "/orders/mine-1/cancel", "/orders/mine-1/amend"]
