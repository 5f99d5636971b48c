"""The command service's OpenAPI document (command_service/openapi.py) covers every route of
the app: each operation has its answers and error statuses documented (an OPERATIONS entry),
the routes that decode their body themselves have that body, and secured routes name the
bearer scheme. A new route without its entry fails here (the fuzz would also find its answers
undocumented)."""

from command_service.app import _BODIES, create_app, openapi_document
from command_service.openapi import OPERATIONS

DOC = openapi_document(create_app())


def test_every_operation_is_documented_with_its_answers():
    ops = {(path, method) for path, item in DOC["paths"].items() for method in item}
    assert ops == set(OPERATIONS), f"undocumented {sorted(ops - set(OPERATIONS))}, stale {sorted(set(OPERATIONS) - ops)}"
    for (path, method), (ok, _schema, errors, secured, _) in OPERATIONS.items():
        op = DOC["paths"][path][method]
        assert set(op["responses"]) == {str(ok), *map(str, errors)}, path
        assert ("security" in op) == secured, path
        if secured:
            assert {"401", "429"} <= set(op["responses"]), path


def test_bodies_of_the_hand_decoded_routes():
    for (path, method), struct in _BODIES.items():
        ref = DOC["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{struct.__name__}"
    order = DOC["components"]["schemas"]["OrderRequest"]
    # a JSON number or a decimal string (msgspec alone would say: a string)
    assert {"type": "number"} in order["properties"]["quantity"]["anyOf"]
    assert {"type": "number"} in order["properties"]["price"]["anyOf"][0]["anyOf"]
