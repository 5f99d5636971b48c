"""The loop watcher (contracts/logs.watch_loop_stalls) says when a service's event loop stood still,
and whether the process was working (its own code held the loop) or not running at all."""

import asyncio
import logging
import time

from contracts.logs import watch_loop_stalls


async def _watch_while(blocker, caplog, threshold_s: float) -> list[logging.LogRecord]:
    logger = logging.getLogger("test.stalls")
    with caplog.at_level(logging.WARNING, logger="test.stalls"):
        task = asyncio.create_task(watch_loop_stalls(logger, threshold_s=threshold_s, tick_s=0.02))
        await asyncio.sleep(0.05)
        blocker()
        await asyncio.sleep(0.1)
        task.cancel()
    return [r for r in caplog.records if r.name == "test.stalls"]


async def test_a_busy_loop_is_reported_with_its_cpu(caplog):
    def spin():
        end = time.monotonic() + 0.4
        while time.monotonic() < end:
            pass

    records = await _watch_while(spin, caplog, threshold_s=0.2)
    assert len(records) == 1
    stalled, cpu = records[0].args
    assert stalled >= 0.35 and cpu >= 0.2  # the process itself was running


async def test_a_process_that_did_not_run_is_reported_without_cpu(caplog):
    records = await _watch_while(lambda: time.sleep(0.4), caplog, threshold_s=0.2)
    assert len(records) == 1
    stalled, cpu = records[0].args
    assert stalled >= 0.35 and cpu < 0.1


async def test_a_loop_that_keeps_turning_is_not_reported(caplog):
    assert await _watch_while(lambda: time.sleep(0.05), caplog, threshold_s=0.2) == []
