"""/docs through the gateway: Swagger UI over both APIs, the AsyncAPI document and the error
catalogue, every asset served by the exchange itself (no CDN: the page works offline), and the
documents served are the ones the services build (which the fuzz suite runs schemathesis on)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from contracts import asyncapi
from tests.e2e.conftest import GATEWAY


@pytest.fixture(scope="module")
def gw():
    with httpx.Client(base_url=GATEWAY, timeout=10) as c:
        yield c


def _page_assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"#]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/docs/", "/docs/asyncapi.html"])
def test_pages_and_every_asset_they_load_come_from_the_gateway(system, gw, page):
    r = gw.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (r.status_code, r.text[:200])
    assets = _page_assets(r.text)
    external = [a for a in assets + re.findall(r'url:\s*"([^"]+)"', r.text) if re.match(r"(https?:)?//", a)]
    assert not external, f"{page} loads from outside the exchange: {external}"
    for a in assets:
        got = gw.get(a)
        assert got.status_code == 200 and got.content, f"{page} -> {a}: {got.status_code}"
    if page != "/docs/asyncapi.html":
        assert "/docs/swagger-ui/swagger-ui-bundle.js" in assets
        assert "validatorUrl: null" in r.text  # Swagger UI's default validator badge calls an outside service
        assert gw.get("/docs/swagger-ui/swagger-ui-bundle.js").headers["content-type"].startswith(
            ("application/javascript", "text/javascript"))


def test_both_openapi_documents_with_bodies_answers_and_auth(system, gw):
    from command_service.app import create_app, openapi_document
    from query_service.openapi import document
    from tests.chaos.invariants import INSTRUMENTS

    command = gw.get("/docs/command.openapi.json").json()
    query = gw.get("/docs/query.openapi.json").json()
    assert command == json.loads(json.dumps(openapi_document(create_app())))
    assert query == json.loads(json.dumps(document(INSTRUMENTS)))
    for doc in (command, query):
        assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                                  "type": "http", "scheme": "bearer"}
    place = command["paths"]["/orders"]["post"]
    body = command["components"]["schemas"][place["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                                            .rsplit("/", 1)[1]]
    assert {"side", "type", "quantity"} <= set(body["required"]) and "idempotency_key" in body["properties"]
    assert "requestBody" in command["paths"]["/orders/cancel-all"]["post"]
    assert "requestBody" in command["paths"]["/admin/settlement"]["post"]
    assert {"201", "400", "401", "403", "409", "413", "429", "503"} <= set(place["responses"])
    assert place["security"] == [{"bearer": []}]
    for name in ("Order", "Trade", "PlaceOrderResponse", "Error"):
        assert name in command["components"]["schemas"]
    for name in ("OrderBook", "Trades", "Candles", "Ticker", "Positions", "Analytics", "Error"):
        assert name in query["components"]["schemas"]
    # every operation documents its answers with a schema, and its errors with the error body
    for doc in (command, query):
        for path, item in doc["paths"].items():
            for method, op in item.items():
                for status, resp in op["responses"].items():
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert (ref == "#/components/schemas/Error") == (int(status) >= 400), (path, method, status)


def test_asyncapi_and_error_catalogue(system, gw):
    assert gw.get("/docs/asyncapi.json").json() == json.loads(json.dumps(asyncapi.document()))
    errors = gw.get("/docs/errors")
    assert errors.status_code == 200 and "`payload_too_large` | 413" in errors.text


def test_no_cdn_ui_left_on_the_command_service(system):
    """Litestar's own schema pages (which load their assets from a CDN) are gone; its JSON route
    serves the complete document."""
    with httpx.Client(base_url=system.command_url, timeout=10) as c:
        assert c.get("/schema/swagger").status_code == 404
        assert "requestBody" in c.get("/schema/openapi.json").json()["paths"]["/orders"]["post"]
