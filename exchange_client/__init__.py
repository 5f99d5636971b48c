"""Python client of the exchange: HTTP clients for every route (sync and async), order entry
over WS /ws, a live order book kept from WS /stream, typed errors. See README.md ("Python client")."""

from exchange_client import results
from exchange_client.book import BookState, LiveOrderBook, stream_url
from exchange_client.client import DEFAULT_URL, AsyncExchangeClient, ExchangeClient
from exchange_client.errors import (
    Conflict,
    ConnectionFailed,
    ExchangeError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
)
from exchange_client.ws import OrderSocket

__all__ = [
    "AsyncExchangeClient", "ExchangeClient", "LiveOrderBook", "OrderSocket", "BookState", "stream_url", "DEFAULT_URL",
    "ExchangeError", "InvalidRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict", "PayloadTooLarge",
    "RateLimited", "Unavailable", "ServerError", "ConnectionFailed", "results",
]
