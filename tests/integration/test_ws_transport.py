"""The coalescing WebSocket protocol on a real uvicorn server: messages sent in one loop
turn arrive complete and in order, a close right after sends still delivers them, and
a send to a client that is gone is reported as a disconnect. In direct mode (the application
takes data messages from the protocol and answers without a coroutine) the messages of one read
are answered in order, and a paused reader takes nothing until resumed."""

import asyncio
import base64
import os
import struct

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


async def direct_app(scope, receive, send):
    """Echoes "n" as "n!" from the protocol's own callback (as command_service/ws.py does); "pause"
    stops reading for 0.3 s, and each message says how many arrived while paused."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    protocol = receive.__self__
    state = {"paused": False, "while_paused": 0}
    def on_message(text):
        if state["paused"]:
            state["while_paused"] += 1
        if text == "pause":
            state["paused"] = True
            protocol.transport.pause_reading()

            def resume():
                state["paused"] = False
                protocol.transport.resume_reading()
            asyncio.get_running_loop().call_later(0.3, resume)
        protocol.send_text_now(f"{text}!{state['while_paused']}".encode())

    protocol.on_message = on_message
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def _serve(application):
    port = free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, ws=CoalescingWebSocketProtocol,
                            log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        await asyncio.sleep(0.01)
    return port, srv, task


@pytest.fixture
async def direct_server():
    port, srv, task = await _serve(direct_app)
    yield port
    srv.should_exit = True
    await task


def _client_frame(text: str) -> bytes:
    """A masked text frame, as a client sends it (payload < 126 bytes)."""
    mask = os.urandom(4)
    data = text.encode()
    return struct.pack("!BB", 0x81, 0x80 | len(data)) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


async def test_direct_mode_answers_many_messages_of_one_read_in_order(direct_server):
    reader, writer = await asyncio.open_connection("127.0.0.1", direct_server)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    writer.write(b"".join(_client_frame(str(i)) for i in range(50)))  # one write: parsed in one go
    got = []
    while len(got) < 50:
        b0, n = await reader.readexactly(2)
        assert b0 == 0x81 and n < 126
        got.append((await reader.readexactly(n)).decode())
    assert got == [f"{i}!0" for i in range(50)]
    writer.close()


async def test_direct_mode_reads_nothing_while_paused(direct_server):
    import websockets
    async with websockets.connect(f"ws://127.0.0.1:{direct_server}/") as ws:
        await ws.send("pause")
        assert await ws.recv() == "pause!0"
        await ws.send("a")
        await ws.send("b")
        # read again only after the resume: nothing was taken while paused
        assert [await ws.recv(), await ws.recv()] == ["a!0", "b!0"]


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
