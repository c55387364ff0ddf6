"""Shared by the adapter payload tests (``tests/test_payloads_*.py``): reading the recorded
payloads in ``tests/payloads/`` and feeding them to an adapter the way the transport would.

Each adapter is tested alone (sans-I/O): the provider side of every exchange is a file (written
to the provider's spec; see its README), and the expected canonical results are written out in
the tests, in full, so no expectation is derived from the code under test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import (
    GatewayError,
)
from gateway.wire import JSON, SSEDecoder, SSEEvent, UpstreamRequest
from providers.base import Deployment, Provider, StreamTranslator

PAYLOADS = Path(__file__).resolve().parent / "payloads"
# Network reads rarely line up with events; feed recorded streams in pieces of this size.
READ_SIZE = 61

USER: list[JSON] = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL: JSON = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# --- reading the recorded payloads --------------------------------------------------------


def recorded(name: str) -> bytes:
    """A payload file's bytes, e.g. ``recorded("openai/chat_completion.json")``."""
    return (PAYLOADS / name).read_bytes()


@dataclass(frozen=True)
class RecordedResponse:
    """An ``.http`` file: a provider's error answer as ``curl -i`` prints it."""

    status: int
    headers: CIMultiDictProxy[str]  # what the aiohttp transport hands to adapters
    body: bytes


def recorded_response(name: str) -> RecordedResponse:
    head, blank, body = recorded(name).partition(b"\n\n")
    assert blank, f"{name}: no blank line between the headers and the body"
    status_line, *lines = head.decode().splitlines()
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        field, _, value = line.partition(":")
        headers.add(field.strip(), value.strip())
    return RecordedResponse(int(status_line.split()[1]), CIMultiDictProxy(headers), body)


def stream_events(name: str) -> list[SSEEvent]:
    """A recorded stream decoded as the engine decodes it: in network-sized reads."""
    data = recorded(name)
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for start in range(0, len(data), READ_SIZE):
        events.extend(decoder.feed(data[start : start + READ_SIZE]))
    events.extend(decoder.close())
    return events


def translate(translator: StreamTranslator, name: str) -> list[JSON]:
    """Every canonical chunk the translator makes of a recorded stream."""
    chunks: list[JSON] = []
    for event in stream_events(name):
        chunks.extend(translator.feed(event))
    return chunks


def finished_after_each_event(translator: StreamTranslator, name: str) -> list[bool]:
    finished: list[bool] = []
    for event in stream_events(name):
        translator.feed(event)
        finished.append(translator.finished)
    return finished


def sent(request: UpstreamRequest) -> JSON:
    """The JSON body of an upstream request."""
    body: JSON = orjson.loads(request.body or b"")
    return body


def mapped_error(provider: Provider, deployment: Deployment, name: str) -> GatewayError:
    answer = recorded_response(name)
    return provider.error(answer.status, answer.headers, answer.body, deployment)


def assert_secret_only_in(request: UpstreamRequest, secret: str, header: str) -> None:
    """The provider key travels in ``header`` and nowhere else: not the URL, body or others."""
    assert secret in request.headers[header]
    assert secret not in request.url
    assert secret.encode() not in (request.body or b"")
    assert [k for k, v in request.headers.items() if secret in v] == [header]
