"""The coalescing WebSocket protocol on a real uvicorn server: messages sent in one loop
turn arrive complete and in order, a close right after sends still delivers them, and
a send to a client that is gone is reported as a disconnect."""

import asyncio

import pytest
import uvicorn
import websockets

from command_service.ws_transport import CoalescingWebSocketProtocol
from ops.stack import free_port


async def app(scope, receive, send):
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        n = int(msg["text"])
        for i in range(n):  # back to back, no yield between them: one write at the turn's end
            await send({"type": "websocket.send", "text": f"{i}:" + "x" * (i % 50)})
        if n == 7:
            await send({"type": "websocket.send", "bytes": b"\x00\x01"})
            await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
            return


@pytest.fixture
async def server():
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws=CoalescingWebSocketProtocol, log_level="warning",
                            lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.01)
    yield f"ws://127.0.0.1:{port}/"
    srv.should_exit = True
    await task


async def test_back_to_back_sends_arrive_in_order(server):
    async with websockets.connect(server) as ws:
        await ws.send("1000")
        got = [await ws.recv() for _ in range(1000)]
        assert got == [f"{i}:" + "x" * (i % 50) for i in range(1000)]
        await ws.send("3")
        assert [await ws.recv() for _ in range(3)] == ["0:", "1:x", "2:xx"]


async def test_close_after_sends_delivers_everything_first(server):
    async with websockets.connect(server) as ws:
        await ws.send("7")
        got = [await ws.recv() for _ in range(8)]
        assert got[:7] == [f"{i}:" + "x" * i for i in range(7)] and got[7] == b"\x00\x01"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd.code == 4000 and closed.value.rcvd.reason == "bye"
