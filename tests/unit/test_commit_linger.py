"""The group commit's linger policy (command_service/lock_session.py linger_s): a commit waits for
more commands only when more are expected within the wait; rare orders, full batches and batches the wait
would grow by less than a quarter never wait."""

from command_service.lock_session import linger_s


def test_busy_instrument_waits_the_linger():
    assert linger_s(arrivals_per_s=500, linger=0.002, pending=1, max_batch=512) == 0.002


def test_rare_orders_never_wait():
    assert linger_s(arrivals_per_s=5, linger=0.002, pending=1, max_batch=512) == 0.0
    assert linger_s(arrivals_per_s=249, linger=0.002, pending=1, max_batch=512) == 0.0  # < half an order expected


def test_full_batch_and_disabled_linger_never_wait():
    assert linger_s(arrivals_per_s=50_000, linger=0.002, pending=512, max_batch=512) == 0.0
    assert linger_s(arrivals_per_s=50_000, linger=0.0, pending=1, max_batch=512) == 0.0


def test_a_large_queued_batch_commits_at_once():
    # 7,000 orders/s: 14 expected during a 2 ms wait. 56 or more already queued: the wait would
    # add less than a quarter to the batch while every queued command waits 2 ms more.
    assert linger_s(arrivals_per_s=7_000, linger=0.002, pending=133, max_batch=512) == 0.0
    assert linger_s(arrivals_per_s=7_000, linger=0.002, pending=56, max_batch=512) == 0.0
    assert linger_s(arrivals_per_s=7_000, linger=0.002, pending=55, max_batch=512) == 0.002
    # 1,500/s with a few queued (the usual case below the peak) still waits
    assert linger_s(arrivals_per_s=1_500, linger=0.002, pending=5, max_batch=512) == 0.002
