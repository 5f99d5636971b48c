"""An error answered with contracts.api.error_answer is freed as soon as the answer is sent,
without the cycle collector (the services run it rarely: gc thresholds raised for latency).
Before, the handler's `err = error_answer(exc)` closed a cycle error -> traceback -> frame ->
error, and every 4xx answer's frames stayed in memory until a full collection (pure, no I/O)."""

from __future__ import annotations

import gc
import weakref

from contracts.api import ApiError, error_answer


class Payload:
    """Stands for what a request's frames hold (the body, the principal, the engine's result)."""


def test_a_handled_api_error_and_its_frames_are_freed_without_the_cycle_collector():
    refs: list[weakref.ref] = []

    def deep(order_id: str) -> None:
        payload = Payload()  # a local of a frame on the error's traceback
        refs.append(weakref.ref(payload))
        raise ApiError(409, "order_closed", f"order {order_id} is already filled", "order_id")

    def handler(order_id: str) -> tuple[int, bytes]:
        # the shape of every route: command_service/fastpath.order_route, ws, nats_bridge, query_service
        try:
            deep(order_id)
        except Exception as exc:
            err = error_answer(exc, (), "on POST /orders/{id}/cancel")
            status, body = err.status, err.body()
        return status, body

    gc.disable()
    try:
        for i in range(100):
            status, body = handler(f"o-{i}")
            assert status == 409 and b"order_closed" in body
        assert sum(r() is not None for r in refs) == 0  # all freed by reference counting alone
    finally:
        gc.enable()


def test_the_answer_itself_is_unchanged():
    try:
        raise ApiError(503, "unavailable", "retry", headers={"Retry-After": "1"})
    except Exception as exc:
        err = error_answer(exc)
    assert (err.status, err.code, err.headers) == (503, "unavailable", {"Retry-After": "1"})
    assert err.body() == b'{"error":{"code":"unavailable","message":"retry"}}'
