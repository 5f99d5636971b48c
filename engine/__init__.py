"""The matching engine: one pure, deterministic OrderBook per instrument."""

from engine.book import OrderBook

__all__ = ["OrderBook"]
