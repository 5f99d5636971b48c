"""GET /docs: the API docs site, served by the command service and reached through the gateway.

- /docs/ - Swagger UI over both OpenAPI documents (command and query: a selector at the top);
  the UI's assets come from the `openapi-ui-bundles` package (PyPI, pinned), never from a CDN;
- /docs/command.openapi.json - this service's complete document (command_service.openapi);
- /docs/query.openapi.json - the query service's, proxied to a query replica by the gateway
  (ops/nginx.conf.template, location /docs);
- /docs/asyncapi.json and /docs/asyncapi.html - the WebSockets (contracts/asyncapi.py);
- /docs/errors - the error catalogue (docs/ERRORS.md)."""

from __future__ import annotations

from pathlib import Path

from litestar import Request, Response, get
from litestar.static_files import create_static_files_router
from openapi_ui_bundles import swagger_ui

from contracts import asyncapi
from contracts.api import json_encoder

STATIC = Path(__file__).resolve().parent / "docs_static"
ERRORS = Path(__file__).resolve().parent.parent / "docs" / "ERRORS.md"
_ASYNCAPI = json_encoder.encode(asyncapi.document())


def _html(name: str) -> Response:
    return Response(content=(STATIC / name).read_bytes(), media_type="text/html")


@get("/docs", include_in_schema=False)  # also /docs/ (Litestar ignores a trailing slash)
async def docs_index() -> Response:
    return _html("index.html")


@get("/docs/asyncapi.html", include_in_schema=False)
async def docs_asyncapi_html() -> Response:
    return _html("asyncapi.html")


@get("/docs/asyncapi.json", include_in_schema=False)
async def docs_asyncapi() -> Response:
    return Response(content=_ASYNCAPI, media_type="application/json")


@get("/docs/command.openapi.json", include_in_schema=False)
async def docs_command_openapi(request: Request) -> Response:
    from command_service.app import openapi_document

    return Response(content=json_encoder.encode(openapi_document(request.app)), media_type="application/json")


@get("/docs/errors", include_in_schema=False)
async def docs_errors() -> Response:
    text = ERRORS.read_bytes() if ERRORS.exists() else b"docs/ERRORS.md is not part of this installation"
    return Response(content=text, media_type="text/plain")


swagger_assets = create_static_files_router(path="/docs/swagger-ui", directories=[swagger_ui.static_path],
                                            include_in_schema=False, name="swagger-ui")

ROUTES = [docs_index, docs_asyncapi_html, docs_asyncapi, docs_command_openapi, docs_errors, swagger_assets]
