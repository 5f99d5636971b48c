"""The query service's OpenAPI document (query_service/openapi.py) against its handlers:
the same routes as the Litestar app, and per handler the same query parameters, defaults
and bounds as the params.* calls in its source (read with the ast module). A parameter added
to a handler and not to the document, or a bound changed on one side only, fails here."""

from __future__ import annotations

import ast
import inspect
import textwrap
import types

from contracts.instruments import load_instruments
from query_service import app as query_app
from query_service import openapi, views
from query_service.settings import QuerySettings
from query_service.settlements import settlements

DOC = openapi.document(load_instruments(QuerySettings.from_env().instruments_file))
UNDOCUMENTED = {"/metrics", "/schema/openapi.json", "/stream"}  # text, the document itself, the WebSocket


def _app_routes() -> dict[str, object]:
    app = query_app.create_app(QuerySettings.from_env())
    out = {}
    for r in app.routes:
        path = r.path.replace(":str", "")
        if path in UNDOCUMENTED:
            continue
        for h in r.route_handlers:
            if "GET" in h.http_methods:
                out[path] = h.fn
    return out


def _const(node, names: dict):
    """Evaluate an argument of a params.* call: a literal, or a bound the handler takes from a
    module or the settings (views.MAX_LEVELS, s.settings.recent_trades, tuple(CANDLE_INTERVALS))."""
    return eval(compile(ast.Expression(node), "<handler>", "eval"), dict(names))  # noqa: S307 - our own source


def handler_params(fn) -> dict[str, dict]:
    """name -> {kind, default, lo, hi} from the handler's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    names = {**vars(query_app), "views": views, "s": types.SimpleNamespace(settings=QuerySettings.from_env())}
    found: dict[str, dict] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        # q.get("x") / request.query_params.get("x")
        if isinstance(f, ast.Attribute) and f.attr == "get" and node.args and isinstance(node.args[0], ast.Constant) \
                and ast.unparse(f.value).split(".")[-1] in ("q", "query_params"):
            found.setdefault(node.args[0].value, {})
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "params":
            if f.attr == "integer":
                name = _const(node.args[1], names)
                found.setdefault(name, {}).update(kind="integer", default=_const(node.args[2], names),
                                                  lo=_const(node.args[3], names), hi=_const(node.args[4], names))
            elif f.attr == "choice":
                name = _const(node.args[1], names)
                found.setdefault(name, {}).update(kind="choice", allowed=set(_const(node.args[2], names)),
                                                  default=_const(node.args[3], names))
    return found


def test_documented_routes_are_the_apps_routes():
    assert set(DOC["paths"]) == set(_app_routes())


def test_documented_parameters_are_the_handlers_parameters():
    routes = _app_routes()
    problems = []
    for path, fn in routes.items():
        documented = {p["name"]: p for p in DOC["paths"][path]["get"]["parameters"] if p["in"] == "query"}
        parsed = handler_params(fn)
        if set(documented) != set(parsed):
            problems.append(f"{path}: document {sorted(documented)} != handler {sorted(parsed)}")
            continue
        for name, h in parsed.items():
            s = documented[name]["schema"]
            if h.get("kind") == "integer":
                got = (s.get("type"), s.get("default"), s.get("minimum"), s.get("maximum"))
                want = ("integer", h["default"], h["lo"], h["hi"])
                if got != want:
                    problems.append(f"{path} {name}: document {got} != handler {want}")
            elif h.get("kind") == "choice":
                if set(s.get("enum", ())) != h["allowed"] or s.get("default") != h["default"]:
                    problems.append(f"{path} {name}: document {s} != handler {h}")
    assert not problems, "\n".join(problems)


def test_the_scan_sees_parameters():
    """The AST reading works (else the test above could pass on nothing)."""
    p = handler_params(_app_routes()["/market/orderbook"])
    assert p["levels"] == {"kind": "integer", "default": 20, "lo": 1, "hi": 100}
    assert set(handler_params(settlements.fn)) == {"instrument", "limit", "client_id"}


def test_secured_routes_declare_the_bearer_scheme_and_auth_errors():
    for path, item in DOC["paths"].items():
        op = item["get"]
        if op.get("security"):
            assert {"401", "403"} <= set(op["responses"]), path
    assert DOC["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
