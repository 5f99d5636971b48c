"""Browser tests: the trading page (web/, served by the gateway at /) in Debian's Chromium, driven by
Playwright from PyPI against the whole system of tests/e2e/conftest.py. Playwright cannot download its
own browser on these machines, so the system binary is launched by its path (`make test` installs it)."""

from __future__ import annotations

import json
import os
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, async_playwright

CHROMIUM = os.environ.get("EXCHANGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def exact_json(text: str):
    """JSON with every number kept as its source text, to compare with what the page shows."""
    return json.loads(text, parse_float=str, parse_int=str)


@pytest.fixture(scope="session")
async def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (make browser)")
    pw = await async_playwright().start()
    b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        await b.close()
        await pw.stop()


class Trader:
    """One browser context = one client, with the page open and its errors collected."""

    def __init__(self, page: Page, gateway: str):
        self.page = page
        self.gateway = gateway
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", self._console)

    def _console(self, m) -> None:
        # Chromium logs every 4xx/5xx fetch as "Failed to load resource"; API errors are expected
        # answers the page shows. Anything else logged as an error is a bug.
        if m.type == "error" and not m.text.startswith("Failed to load resource"):
            self.errors.append(f"console.error: {m.text}")

    async def open(self, instrument: str | None = None) -> "Trader":
        await self.page.goto(self.gateway + "/" + (f"?instrument={instrument}" if instrument else ""))
        await self.wait_live()
        return self

    async def wait_live(self, timeout: float = 15_000) -> None:
        await self.page.wait_for_selector("[data-testid=feed-status][data-state=live]", timeout=timeout)

    async def use_key(self, key: str, client_id: str) -> None:
        await self.page.fill("[data-testid=api-key]", key)
        await self.page.press("[data-testid=api-key]", "Enter")
        await self.page.wait_for_function(
            "c => document.querySelector('[data-testid=who]').textContent.includes(c)", arg=client_id, timeout=10_000
        )

    async def ticket(self, *, side: str, type: str = "limit", price: str | None = None, quantity: str,
                     stop_price: str | None = None, tif: str | None = None) -> dict:
        """Fill the order ticket and submit it; returns the result line's data (status, order id)."""
        p = self.page
        await p.evaluate("() => { const r = document.querySelector('[data-testid=ticket-result]'); r.textContent = ''; delete r.dataset.orderId; }")
        await p.check(f"[data-testid=side-{side}]")
        await p.select_option("[data-testid=type]", type)
        if price is not None:
            await p.fill("[data-testid=price]", price)
        if stop_price is not None:
            await p.fill("[data-testid=stop-price]", stop_price)
        if tif is not None:
            await p.select_option("[data-testid=tif]", tif)
        await p.fill("[data-testid=quantity]", quantity)
        await p.click("[data-testid=submit]")
        await p.wait_for_function(
            "() => { const r = document.querySelector('[data-testid=ticket-result]');"
            " const e = document.querySelector('[data-testid=ticket] .field-error:not(:empty)');"
            " return r.dataset.orderId || e; }",
            timeout=10_000,
        )
        return await p.evaluate("() => ({...document.querySelector('[data-testid=ticket-result]').dataset})")

    async def ladder(self) -> dict:
        """What the ladder shows: seq and [price, quantity, cumulative] texts, best level first."""
        return await self.page.evaluate(
            """() => {
              const rows = s => [...document.querySelectorAll(`[data-testid=ladder-${s}] tr`)]
                .map(r => [r.dataset.price, r.dataset.quantity, r.querySelector('.cum').textContent]);
              return {seq: document.querySelector('[data-testid=ladder-bids]').dataset.seq,
                      bids: rows('bids'), asks: rows('asks').reverse(),
                      state: document.querySelector('[data-testid=feed-status]').dataset.state};
            }"""
        )

    async def column(self, testid: str, cls: str) -> list[str]:
        return await self.page.eval_on_selector_all(f"[data-testid={testid}] tr td.{cls}", "tds => tds.map(t => t.textContent)")

    def assert_no_errors(self) -> None:
        assert not self.errors, self.errors


@pytest.fixture
async def trader(browser, system):
    """trader(viewport=...) opens a new client (context); all are closed after the test and
    must not have logged a JS error."""
    made: list[tuple[object, Trader]] = []

    async def make(viewport: dict = DESKTOP) -> Trader:
        ctx = await browser.new_context(viewport=viewport)
        t = Trader(await ctx.new_page(), system.gateway)
        made.append((ctx, t))
        return t

    yield make
    try:
        for _, t in made:
            t.assert_no_errors()
    finally:
        for ctx, _ in made:
            await ctx.close()


async def rest_book(gateway: str, instrument: str, levels: int) -> dict:
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{gateway}/market/orderbook", params={"instrument": instrument, "levels": levels})
        r.raise_for_status()
        b = exact_json(r.text)
    rows = lambda side: [[lv["price"], lv["quantity"], lv["cumulative"]] for lv in b[side]]  # noqa: E731
    return {"seq": b["seq"], "bids": rows("bids"), "asks": rows("asks")}


def same_book(page_book: dict, rest: dict) -> bool:
    """Prices and quantities as exact texts; cumulative as exact decimals (the page sums them itself).
    Not the seq: an event that leaves the book unchanged (a rejected order) moves the view's seq
    without an orderbook update on the feed."""
    for side in ("bids", "asks"):
        a, b = page_book[side], rest[side]
        if len(a) != len(b):
            return False
        for (p1, q1, c1), (p2, q2, c2) in zip(a, b):
            if p1 != p2 or q1 != q2 or Decimal(c1) != Decimal(c2):
                return False
    return True


async def wait_book_equal(t: Trader, gateway: str, instrument: str, timeout: float) -> float:
    """Seconds until the page's ladder equals GET /market/orderbook (same seq, same levels)."""
    depth = await t.page.evaluate("() => window.exchangePage.depth")
    start = time.monotonic()
    page_book = rest = None
    while time.monotonic() - start < timeout:
        page_book = await t.ladder()
        rest = await rest_book(gateway, instrument, depth)
        if same_book(page_book, rest):
            return time.monotonic() - start
        await t.page.wait_for_timeout(50)
    raise AssertionError(f"ladder != REST book after {timeout}s:\npage {page_book}\nrest {rest}")
