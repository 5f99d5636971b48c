"""The AsyncAPI 3.0 document of /ws and /stream (contracts/asyncapi.py) is valid: the
structure AsyncAPI 3.0 requires, every reference resolves, every payload is a valid JSON
Schema (draft 2020-12), every example validates against its message, every message is used
by an operation, and docs/asyncapi.yaml is the document rendered."""

from __future__ import annotations

import json
import re

import jsonschema_rs
import pytest
import yaml

from contracts import asyncapi
from tests.ws_conformance import FrameChecker

DOC = asyncapi.document()


def resolve(ref: str):
    assert ref.startswith("#/"), ref
    node = DOC
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref}: no {part!r}"
        node = node[part]
    return node


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def test_document_structure_is_asyncapi_3():
    assert DOC["asyncapi"] == "3.0.0"
    assert isinstance(DOC["info"]["title"], str) and isinstance(DOC["info"]["version"], str)
    assert set(DOC) <= {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations",
                        "components"}
    key = re.compile(r"^[A-Za-z0-9_.\-]+$")
    for name, server in DOC["servers"].items():
        assert key.match(name) and isinstance(server["host"], str) and server["protocol"] in ("ws", "wss")
    for cid, ch in DOC["channels"].items():
        assert key.match(cid) and ch["address"].startswith("/")
        assert set(ch) <= {"address", "messages", "title", "summary", "description", "servers", "parameters",
                           "tags", "externalDocs", "bindings"}
    for oid, op in DOC["operations"].items():
        assert key.match(oid) and op["action"] in ("send", "receive")
        assert "address" in resolve(op["channel"]["$ref"])
        assert op["channel"]["$ref"].startswith("#/channels/")
        for m in op["messages"]:  # 3.0: an operation's messages must be messages of its channel
            assert m["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), (oid, m)
    for name, msg in DOC["components"]["messages"].items():
        assert key.match(name) and msg["payload"]["type"] == "object"
        assert set(msg) <= {"name", "title", "summary", "description", "contentType", "payload", "headers",
                            "examples", "correlationId", "tags", "externalDocs", "bindings", "traits"}
        for ex in msg["examples"]:
            assert set(ex) <= {"name", "summary", "headers", "payload"}
    for scheme in DOC["components"]["securitySchemes"].values():
        assert scheme["type"] == "http" and scheme["scheme"] == "bearer"


def test_every_reference_resolves():
    for ref in refs(DOC):
        resolve(ref)


def test_every_message_is_used_by_an_operation_of_its_channel():
    for cid, ch in DOC["channels"].items():
        used = {m["$ref"].rsplit("/", 1)[1] for op in DOC["operations"].values()
                if op["channel"]["$ref"] == f"#/channels/{cid}" for m in op["messages"]}
        assert used == set(ch["messages"]), cid


@pytest.mark.parametrize("name", sorted(DOC["components"]["messages"]))
def test_payload_is_a_json_schema_and_examples_validate(name):
    msg = DOC["components"]["messages"][name]
    assert jsonschema_rs.meta.is_valid(msg["payload"]), name
    v = jsonschema_rs.validator_for(msg["payload"])
    assert msg["examples"], f"{name} has no example"
    for ex in msg["examples"]:
        errors = [e.message for e in v.iter_errors(json.loads(json.dumps(ex["payload"])))]
        assert not errors, (name, ex["name"], errors)


def test_frames_are_told_apart_and_bad_ones_refused():
    c = FrameChecker()
    assert c.check("marketData", "out", '{"type":"orderbook","action":"update","instrument":"BTC-USD",'
                                        '"prev_seq":1,"seq":2,"changes":[{"side":"buy","price":1.5,"quantity":0}]}') is None
    assert "prev_seq" in c.check("marketData", "out", '{"type":"orderbook","action":"update","instrument":"BTC-USD",'
                                                      '"seq":2,"changes":[]}')
    assert c.check("orderEntry", "in", '{"type":"order","order_type":"limit","side":"buy","quantity":"1",'
                                       '"price":"100"}') is None
    assert c.check("orderEntry", "in", '{"type":"order","order_type":"limit","side":"up","quantity":"1"}')
    assert c.check("orderEntry", "out", '{"type":"trade"}')  # a /stream message is not a /ws message
    assert c.check("marketData", "in", "[1]") == "not a JSON object"


def test_rendered_yaml_is_the_document():
    assert yaml.safe_load(asyncapi.RENDERED.read_text()) == json.loads(json.dumps(DOC)), \
        "docs/asyncapi.yaml is stale: run .venv/bin/python -m contracts.asyncapi"
