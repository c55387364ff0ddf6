"""Both transports (aiohttp, the default, and httpx) against a real local server: answers,
streams, refused connections and each kind of timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import orjson
import pytest

from gateway import AsyncGateway
from gateway.errors import StaleConnectionError, UpstreamConnectionError, UpstreamTimeoutError
from gateway.transport import AiohttpTransport, HttpxTransport, Timeouts, Transport, UpstreamRequest
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY
from tests.harness import free_port

HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}


@pytest.fixture(params=["aiohttp", "httpx"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    t: Transport = AiohttpTransport() if request.param == "aiohttp" else HttpxTransport()
    yield t
    await t.close()


def chat(url: str, **extra: object) -> UpstreamRequest:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi there"}], **extra}
    return UpstreamRequest("POST", url + "/v1/chat/completions", HEADERS, orjson.dumps(body))


async def test_send_returns_status_headers_and_body(transport, openai_emu):
    resp = await transport.send(chat(openai_emu.url), Timeouts())
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert orjson.loads(await resp.read())["choices"][0]["message"]["content"] == "echo: hi there"


async def test_stream_bytes_arrive_as_sent_not_at_the_end(transport, openai_emu):
    openai_emu.fail_next(Fault(stall_after=3, stall_seconds=0.3))
    resp = await transport.send(chat(openai_emu.url, stream=True), Timeouts())
    arrivals: list[tuple[float, bytes]] = []
    async for piece in resp.iter_bytes():
        arrivals.append((time.monotonic(), piece))
    await resp.close()
    assert b"".join(p for _, p in arrivals).endswith(b"data: [DONE]\n\n")
    assert arrivals[-1][0] - arrivals[0][0] >= 0.25  # the first events came before the stall


async def test_refused_connection_is_upstream_connection_error(transport):
    dead = UpstreamRequest("POST", f"http://127.0.0.1:{free_port()}/v1/x", HEADERS, b"{}")
    with pytest.raises(UpstreamConnectionError):
        await transport.send(dead, Timeouts(connect=2, read=2))


async def test_slow_first_byte_is_upstream_timeout(transport, openai_emu):
    openai_emu.fail_next(Fault(status=200, body=b"{}", delay=2.0))
    with pytest.raises(UpstreamTimeoutError):
        resp = await transport.send(chat(openai_emu.url), Timeouts(connect=2, read=0.3))
        await resp.read()


async def test_stalled_stream_is_upstream_timeout(transport, openai_emu):
    openai_emu.fail_next(Fault(stall_after=3, stall_seconds=2.0))
    resp = await transport.send(chat(openai_emu.url, stream=True), Timeouts(connect=2, read=0.3))
    with pytest.raises(UpstreamTimeoutError):
        async for _ in resp.iter_bytes():
            pass
    await resp.close()


async def test_a_reader_slower_than_the_idle_limit_is_not_taken_for_a_stall(transport, openai_emu):
    # The upstream pauses 0.1 s mid-stream, well within the 0.3 s idle limit; the reader
    # holds each piece for 0.5 s. Only time spent waiting for bytes may count as idle.
    openai_emu.fail_next(Fault(stall_after=2, stall_seconds=0.1))
    resp = await transport.send(chat(openai_emu.url, stream=True), Timeouts(connect=2, read=0.3))
    pieces = []
    async for piece in resp.iter_bytes():
        pieces.append(piece)
        await asyncio.sleep(0.5)
    await resp.close()
    assert b"".join(pieces).endswith(b"data: [DONE]\n\n")


async def test_every_stalled_stream_is_cut_at_its_own_idle_limit(openai_emu):
    # One watch looks after every streamed body of a transport: each stall is still noticed
    # on time, each at its own limit.
    transport = AiohttpTransport()
    try:

        async def stalled(read: float) -> float:
            resp = await transport.send(
                chat(openai_emu.url, stream=True), Timeouts(connect=2, read=read)
            )
            began = time.monotonic()
            with pytest.raises(UpstreamTimeoutError):
                async for _ in resp.iter_bytes():
                    began = time.monotonic()
            await resp.close()
            return time.monotonic() - began

        for _ in range(6):
            openai_emu.fail_next(Fault(stall_after=2, stall_seconds=3.0))
        waited = await asyncio.gather(*(stalled(r) for r in (0.2, 0.2, 0.2, 0.6, 0.6, 0.6)))
    finally:
        await transport.close()
    assert all(0.2 <= w < 0.4 for w in waited[:3]), waited
    assert all(0.6 <= w < 0.9 for w in waited[3:]), waited


async def test_library_user_can_inject_their_own_httpx_client(openai_emu):
    config = {
        "providers": {
            "openai": {"type": "openai", "api_key": API_KEY, "base_url": openai_emu.url + "/v1"}
        },
        "models": {"gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]}},
    }
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(str(request.url))

    async with httpx.AsyncClient(event_hooks={"request": [hook]}) as client:
        async with AsyncGateway(config, transport=HttpxTransport(client)) as gw:
            reply = await gw.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "yo"}]
            )
            stream = await gw.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "yo"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert not client.is_closed  # the gateway does not close a client it was given
    assert reply.choices[0].message.content == "echo: yo"
    assert text == "echo: yo"
    assert seen == [openai_emu.url + "/v1/chat/completions"] * 2


async def test_stalled_stream_through_gateway_ends_with_timeout_error(openai_emu):
    config = {
        "providers": {
            "openai": {
                "type": "openai",
                "api_key": API_KEY,
                "base_url": openai_emu.url + "/v1",
                "timeouts": {"connect": 2, "read": 0.3},
            }
        },
        "models": {"gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]}},
    }
    openai_emu.fail_next(Fault(stall_after=2, stall_seconds=2.0))
    async with AsyncGateway(config) as gw:
        stream = await gw.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
        with pytest.raises(UpstreamTimeoutError, match="deployment 'openai/gpt-4o'"):
            async for _ in stream:
                pass


def dropping_upstream(
    served: list[int], received: list[int], pause: float
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An upstream that answers the first request of each connection and drops the
    connection, ``pause`` seconds after reading it, on its second."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in range(2):
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            _, _, rest = head.partition(b"content-length: ")
            length = int(rest.split(b"\r\n", 1)[0] or b"0")
            await reader.readexactly(length)
            received.append(1)
            if n == 1:
                await asyncio.sleep(pause)
                writer.close()
                return
            served.append(1)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    return handle


async def test_aiohttp_reports_a_pooled_connection_closed_as_it_was_reused_as_stale():
    """As a server does whose keep-alive timeout fires as the request arrives: the transport
    does not resend on its own (the attempt loop does, and counts it), but says the
    connection was stale, and the next request goes over a new connection."""
    served: list[int] = []
    received: list[int] = []
    server = await asyncio.start_server(dropping_upstream(served, received, 0), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = AiohttpTransport()
    request = UpstreamRequest("POST", f"http://127.0.0.1:{port}/x", {}, b"{}")
    try:
        resp = await transport.send(request, Timeouts(connect=2, read=2))
        assert resp.status == 200 and await resp.read() == b"{}"
        with pytest.raises(StaleConnectionError):
            await transport.send(request, Timeouts(connect=2, read=2))
        resp = await transport.send(request, Timeouts(connect=2, read=2))
        assert resp.status == 200 and await resp.read() == b"{}"
    finally:
        await transport.close()
        server.close()
    assert (len(served), len(received)) == (2, 3)


async def test_aiohttp_does_not_resend_a_request_dropped_after_it_was_outstanding():
    """A reused connection dropped after the request waited a while is the upstream's
    answer to it: reported as a connection failure, and sent only once."""
    served: list[int] = []
    received: list[int] = []
    server = await asyncio.start_server(dropping_upstream(served, received, 0.3), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = AiohttpTransport()
    request = UpstreamRequest("POST", f"http://127.0.0.1:{port}/x", {}, b"{}")
    try:
        resp = await transport.send(request, Timeouts(connect=2, read=2))
        assert resp.status == 200 and await resp.read() == b"{}"
        with pytest.raises(UpstreamConnectionError) as raised:
            await transport.send(request, Timeouts(connect=2, read=2))
        assert not isinstance(raised.value, StaleConnectionError)
    finally:
        await transport.close()
        server.close()
    assert len(received) == 2
