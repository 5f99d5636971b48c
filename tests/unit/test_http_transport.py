"""The coalescing transport of the services' HTTP protocol (contracts/http_transport.py): the
writes of one loop turn reach the socket as one write, in order, and close() sends what is
pending first."""

import asyncio

from contracts.http_transport import _CoalescingTransport


class RecordingTransport:
    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name):
        return ("127.0.0.1", 1) if name == "peername" else None


async def test_writes_of_one_turn_are_sent_as_one_in_order():
    raw = RecordingTransport()
    t = _CoalescingTransport(raw, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"body")
    assert raw.writes == []
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    t.write(b"next")
    await asyncio.sleep(0)
    assert raw.writes[1:] == [b"next"]
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # everything else is the real transport's


async def test_close_sends_what_is_pending_first():
    raw = RecordingTransport()
    t = _CoalescingTransport(raw, asyncio.get_running_loop())
    t.write(b"a")
    t.write(b"b")
    t.close()
    assert raw.writes == [b"ab"] and raw.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left and a closed transport
    assert raw.writes == [b"ab"]
