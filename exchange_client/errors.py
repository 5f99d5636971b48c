"""Typed errors from the exchange's error body {"error": {"code", "message", "field"}}.

One class per HTTP status group (docs/ERRORS.md); `code` says exactly what went wrong."""

from __future__ import annotations


class ExchangeError(Exception):
    """An error answer of the exchange (or of its gateway)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None, body=None):
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.body = body


class InvalidRequest(ExchangeError):
    """400: the request is wrong; fix it (nothing was changed)."""


class Unauthorized(ExchangeError):
    """401: no key, or an unknown/revoked one."""


class Forbidden(ExchangeError):
    """403: another client's order or client_id, or an admin route."""


class NotFound(ExchangeError):
    """404."""


class Conflict(ExchangeError):
    """409: order_closed, duplicate_client_order_id, idempotency_key_reused, risk_limit."""


class PayloadTooLarge(ExchangeError):
    """413."""


class RateLimited(ExchangeError):
    """429: retried by the client after Retry-After; raised when the retries run out."""


class Unavailable(ExchangeError):
    """502/503/504: the exchange cannot answer now; retried by the client, raised when the retries run out."""


class ServerError(ExchangeError):
    """500: a bug on the exchange's side."""


class ConnectionFailed(ExchangeError):
    """No answer at all (connection refused, reset, timed out) after the retries."""


_BY_STATUS = {400: InvalidRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
              413: PayloadTooLarge, 429: RateLimited, 500: ServerError, 502: Unavailable, 503: Unavailable,
              504: Unavailable}


def error_from(status: int, body, retry_after: float | None = None) -> ExchangeError:
    """The typed error for an answer with this status and (decoded JSON) body."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"code": "error", "message": f"HTTP {status}"}
    cls = _BY_STATUS.get(status) or (InvalidRequest if 400 <= status < 500 else ServerError)
    return cls(status, str(err.get("code", "error")), str(err.get("message", "")), err.get("field"),
               retry_after, body)
