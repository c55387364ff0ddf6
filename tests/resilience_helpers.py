"""Callers for the resilience specification: the same request through the HTTP proxy (the
openai SDK, which never retries here) or the in-process library, and what came back.

Both sides report an ``Answer``: the text the caller received, the model and usage it was told,
the gateway's facts about the call, and the error it got (if any), so one test can state a
behaviour once and check it on either side.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai
import orjson

import gateway
from gateway import GatewayError
from tests.emulators.faulty import Call, events, read_request, response_head

PROMPT = "hello there world"
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass
class Failure:
    """The error a caller got, as its client presented it."""

    status: int | None  # None: an error that arrived inside a 200 stream
    code: str | None
    message: str
    exception: BaseException | None = None


@dataclass
class Answer:
    """What one call gave its caller, and the gateway's facts about it."""

    text: str = ""
    model: str | None = None
    usage: dict[str, int] | None = None
    attempts: int | None = None  # None: the side does not say (library errors)
    fallback_used: bool | None = None
    provider: str | None = None
    deployment: str | None = None
    seconds: float = 0.0
    error: Failure | None = None
    error_after: float | None = None  # seconds from the call to the error
    ids: set[str] = field(default_factory=set)  # streams: the chunk ids seen
    done: bool | None = None  # proxy streams: whether ``data: [DONE]`` arrived
    finish_reason: str | None = None
    malformed_events: int | None = None  # library streams
    continued: bool | None = None  # library: a cut stream was finished elsewhere

    @property
    def ok(self) -> bool:
        return self.error is None


def counts(usage: Any) -> dict[str, int] | None:
    """The three token counts of a usage object or mapping."""
    if usage is None:
        return None
    data = usage if isinstance(usage, dict) else usage.model_dump()
    return {k: data[k] for k in USAGE_KEYS}


def read_chunk(answer: Answer, chunk: dict[str, Any]) -> None:
    """Fold one stream chunk (a mapping in the OpenAI shape) into ``answer``."""
    answer.ids.add(chunk["id"])
    answer.model = answer.model or chunk.get("model")
    if chunk.get("usage"):
        answer.usage = counts(chunk["usage"])
    for choice in chunk.get("choices") or ():
        answer.text += (choice.get("delta") or {}).get("content") or ""
        answer.finish_reason = choice.get("finish_reason") or answer.finish_reason


class Caller(Protocol):
    side: str
    calls: int

    def chat(
        self,
        model: str,
        *,
        stream: bool = False,
        fallbacks: list[str] | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> Answer: ...


class ProxyCaller:
    """Calls a running gateway with the openai SDK (``max_retries=0``), reading raw headers
    and, for streams, the raw SSE lines (to see ``[DONE]`` and error events)."""

    side = "proxy"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=15)
        self.calls = 0

    def chat(
        self,
        model: str,
        *,
        stream: bool = False,
        fallbacks: list[str] | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> Answer:
        """Per-request options go as the documented headers ``x-gateway-fallbacks`` and
        ``x-gateway-timeout``."""
        self.calls += 1
        headers: dict[str, str] = dict(params.pop("extra_headers", None) or {})
        if fallbacks is not None:
            headers["x-gateway-fallbacks"] = ",".join(fallbacks) or "none"
        if timeout is not None:
            headers["x-gateway-timeout"] = str(timeout)
        messages = params.pop("messages", [{"role": "user", "content": PROMPT}])
        answer = Answer()
        started = time.monotonic()
        try:
            if stream:
                self._stream(answer, started, model, messages, headers, params)
            else:
                raw = self.client.chat.completions.with_raw_response.create(
                    model=model, messages=messages, extra_headers=headers, **params
                )
                self._facts(answer, raw.headers)
                completion = raw.parse().model_dump()
                answer.text = completion["choices"][0]["message"]["content"] or ""
                answer.model = completion["model"]
                answer.usage = counts(completion.get("usage"))
                answer.finish_reason = completion["choices"][0]["finish_reason"]
        except openai.APIStatusError as exc:
            self._facts(answer, exc.response.headers)
            body = exc.body if isinstance(exc.body, dict) else {}
            answer.error = Failure(
                exc.status_code, body.get("code"), str(body.get("message", exc.message)), exc
            )
            answer.error_after = time.monotonic() - started
        answer.seconds = time.monotonic() - started
        return answer

    def _stream(
        self,
        answer: Answer,
        started: float,
        model: str,
        messages: Any,
        headers: dict[str, str],
        params: dict[str, Any],
    ) -> None:
        answer.done = False
        with self.client.chat.completions.with_streaming_response.create(
            model=model, messages=messages, stream=True, extra_headers=headers, **params
        ) as response:
            self._facts(answer, response.headers)
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if answer.done or answer.error is not None:
                    raise AssertionError(f"an event after the end of the stream: {data!r}")
                if data == "[DONE]":
                    answer.done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    err = event["error"]
                    answer.error = Failure(None, err.get("code"), err.get("message", ""))
                    answer.error_after = time.monotonic() - started
                    continue
                read_chunk(answer, event)

    @staticmethod
    def _facts(answer: Answer, headers: Any) -> None:
        if "x-gateway-attempts" in headers:
            answer.attempts = int(headers["x-gateway-attempts"])
        if "x-gateway-fallback-used" in headers:
            answer.fallback_used = headers["x-gateway-fallback-used"] == "true"
        answer.provider = headers.get("x-gateway-provider")
        answer.deployment = headers.get("x-gateway-deployment")


class LibraryCaller:
    """Calls an in-process ``gateway.Gateway``; facts come from ``.gateway`` / ``.info``."""

    side = "library"

    def __init__(self, gw: gateway.Gateway) -> None:
        self.gw = gw
        self.calls = 0

    def chat(
        self,
        model: str,
        *,
        stream: bool = False,
        fallbacks: list[str] | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> Answer:
        """Per-request options go as the body fields ``fallbacks`` and ``gateway_timeout``."""
        self.calls += 1
        extra: dict[str, Any] = dict(params.pop("extra_body", None) or {})
        if fallbacks is not None:
            extra["fallbacks"] = fallbacks
        if timeout is not None:
            extra["gateway_timeout"] = timeout
        messages = params.pop("messages", [{"role": "user", "content": PROMPT}])
        answer = Answer()
        started = time.monotonic()
        try:
            if stream:
                chunks = self.gw.chat.completions.create(
                    model=model, messages=messages, stream=True, extra_body=extra, **params
                )
                try:
                    for chunk in chunks:
                        read_chunk(answer, chunk.model_dump())
                finally:
                    self._facts(answer, chunks.info)
                    answer.malformed_events = chunks.info.malformed_events
            else:
                completion = self.gw.chat.completions.create(
                    model=model, messages=messages, extra_body=extra, **params
                )
                assert completion.gateway is not None
                self._facts(answer, completion.gateway)
                answer.text = completion.choices[0].message.content or ""
                answer.model = completion.model
                answer.usage = counts(completion.usage)
                answer.finish_reason = completion.choices[0].finish_reason
        except GatewayError as exc:
            answer.error = Failure(exc.status, exc.code, exc.message, exc)
            answer.error_after = time.monotonic() - started
        answer.seconds = time.monotonic() - started
        return answer

    @staticmethod
    def _facts(answer: Answer, info: gateway.CallInfo) -> None:
        answer.attempts = info.attempts
        answer.fallback_used = info.fallback_used
        answer.provider = info.provider
        answer.deployment = info.deployment
        answer.continued = info.continued


@contextmanager
def watchdog(seconds: int) -> Iterator[None]:
    """Fail the test (instead of hanging the suite) if it runs longer than ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"test still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Side:
    """One way of calling a gateway, the public models it serves, and the upstream that
    plays their faults, so a test can check both what the caller got and what upstream saw."""

    caller: Caller
    models: dict[str, Any]
    up: Any  # tests.emulators.faulty.FaultyUpstream

    @property
    def name(self) -> str:
        return self.caller.side

    def chat(self, model: str, **kwargs: Any) -> Answer:
        return self.caller.chat(model, **kwargs)

    def upstream(self, model: str, deployment: int = 0) -> str:
        """The upstream model name (scenario and tag) of one deployment of ``model``."""
        entry = self.models[model]["deployments"][deployment]
        return str(entry.get("model") or entry["deployment"])

    def attempts(self, model: str, deployment: int = 0) -> list[Any]:
        """The requests the upstream received for one deployment of ``model``."""
        return list(self.up.attempts_for(self.upstream(model, deployment)))

    def gaps(self, model: str, deployment: int = 0) -> list[float]:
        return list(self.up.gaps(self.upstream(model, deployment)))


class LateCutUpstream:
    """One stream fault FaultyUpstream cannot time: the first ``before`` events of a normal
    answer, a ``pause``, ``after`` more events, then the connection closes without the
    terminating chunk. The late events and the cut arrive together, while a slow consumer has
    not asked the gateway for more, so they sit unread when the connection breaks."""

    def __init__(self, before: int = 2, after: int = 1, pause: float = 0.1) -> None:
        self.before, self.after, self.pause = before, after, pause
        self.url = ""
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> LateCutUpstream:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(timeout=5)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_request(reader)
            if request is None:
                return
            self.requests += 1
            body = orjson.loads(request.body)
            sent = events(Call(str(body["model"]), "", body, 1))
            head = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"}
            writer.write(response_head(200, head, keep_alive=False))
            for i, event in enumerate(sent[: self.before + self.after]):
                if i == self.before:
                    await writer.drain()
                    await asyncio.sleep(self.pause)
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
        finally:
            writer.close()
