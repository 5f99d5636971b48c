"""docs/ERRORS.md lists every error `code` the exchange answers with, and nothing else.

The codes are found by scanning the source of both services, the shared contracts and the
gateway template for the ways an error is built (EdgeError/ApiError/ConversionError/bad/_err/
error(...), `code = "..."`, the HTTP-status maps and literal `{"error":{"code":...}}` bodies).
A new code without a catalogue row, or a row nothing emits any more, fails this test.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "docs" / "ERRORS.md"
SOURCES = ["command_service", "query_service", "contracts", "engine", "ops/nginx.conf.template"]

_CALLS = re.compile(
    r"""(?:EdgeError|ApiError)\(\s*\d{3},\s*"(\w+)"        # EdgeError(400, "code", ...)
      | (?:\bbad|\bbad_request|\b_err|\berror|ConversionError)\(\s*"(\w+)"  # bad_request("code"), _err("code"), ...
      | "code"\s*:\s*"(\w+)"                              # {"code": "..."}
      | \\?"code\\?"\s*:\s*\\?"(\w+)                      # b'{"error":{"code":"..."' and nginx bodies
    """,
    re.X,
)
_ASSIGN = re.compile(r"\bcode\s*=\s*\"")       # code = "a" if x == "y" else "b": "a" and "b"
_STATUS_MAP = re.compile(r"\b\d{3}:\s*\"([a-z][a-z_]+)\"")  # {400: "bad_request", ...}
_ASSIGNED = re.compile(r"(?:(?<![=!<>])=|\belse)\s*\"(\w+)\"")
_FALLBACK = re.compile(r"_CODES\.get\(\w+,\s*\"(\w+)\"\)|codes\.get\(\w+,\s*\"(\w+)\"\)")


def emitted_codes() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    files: list[Path] = []
    for s in SOURCES:
        p = ROOT / s
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    for path in files:
        for line in path.read_text().splitlines():
            codes = {c for m in _CALLS.finditer(line) for c in m.groups() if c}
            codes |= {c for m in _FALLBACK.finditer(line) for c in m.groups() if c}
            codes |= set(_STATUS_MAP.findall(line))
            if _ASSIGN.search(line):
                codes |= set(_ASSIGNED.findall(line))
            for c in codes:
                found.setdefault(c, set()).add(str(path.relative_to(ROOT)))
    return found


def catalogued_codes() -> dict[str, str]:
    rows = {}
    for line in CATALOGUE.read_text().splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|\s*([^|]+)\|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def test_every_emitted_code_is_catalogued_and_every_catalogued_code_is_emitted():
    emitted = emitted_codes()
    listed = catalogued_codes()
    assert len(emitted) > 30, f"the scan found too few codes to be working: {sorted(emitted)}"
    missing = {c: sorted(w) for c, w in emitted.items() if c not in listed}
    stale = sorted(set(listed) - set(emitted))
    assert not missing, f"codes emitted but not in docs/ERRORS.md: {missing}"
    assert not stale, f"codes in docs/ERRORS.md that nothing emits: {stale}"


def test_every_row_names_statuses_a_client_can_branch_on():
    for code, status in catalogued_codes().items():
        assert re.fullmatch(r"(\d{3}|\dxx|WS)(, (\d{3}|\dxx|WS))*", status), f"{code}: status column {status!r}"


def test_one_code_for_a_body_over_the_size_limit():
    """The gateway (nginx) and the command service (fast path and framework) answer 413 with the same code."""
    from contracts.api import body_too_large, framework_error

    template = (ROOT / "ops" / "nginx.conf.template").read_text()
    gateway = re.search(r"return 413 '.*?\"code\":\"(\w+)\"", template).group(1)
    assert body_too_large(16384).code == framework_error(413, "too large").code == gateway
    assert "body_too_large(" in (ROOT / "command_service" / "fastpath.py").read_text()
