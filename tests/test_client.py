"""``GatewayClient`` / ``AsyncGatewayClient`` against a real gateway on 127.0.0.1, routed to the
OpenAI emulator and to the mock provider."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway import (
    AsyncGatewayClient,
    AuthenticationError,
    BudgetExceededError,
    Gateway,
    GatewayClient,
    GatewayError,
    GatewayFacts,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamError,
)
from gateway.client import GatewayConnectionError, GatewayTimeoutError
from gateway.types import ChatCompletion, ChatCompletionChunk, CreateEmbeddingResponse
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import ServerThread, free_port

MASTER_KEY = "sk-gateway-client-test"
ROOT = Path(__file__).resolve().parent.parent
RATE_LIMITED = Fault(
    status=429,
    body=orjson.dumps(
        {"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit"}}
    ),
    headers={"Retry-After": "1"},
)
UPSTREAM_500 = Fault(status=500, body=b'{"error":{"message":"boom","type":"server_error"}}')


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def deployment(provider: str, model: str, region: str | None = None) -> dict[str, Any]:
    return {"provider": provider, "model": model, **({"region": region} if region else {})}


@pytest.fixture(scope="module")
def url(openai_upstream: OpenAIEmulator, start_gateway: GatewayFactory) -> str:
    """A gateway with a master key, serving emulator models and mock models (…/v1)."""
    return start_gateway(
        {
            "auth": {"master_key": MASTER_KEY},
            "routing": SINGLE_ATTEMPT,
            "providers": {
                "openai": {
                    "type": "openai",
                    "api_key": API_KEY,
                    "base_url": openai_upstream.url + "/v1",
                },
                "mock": {"type": "mock"},
            },
            "models": {
                "gpt-4o": {"deployments": [deployment("openai", "gpt-4o")]},
                "embed-small": {"deployments": [deployment("openai", "text-embedding-3-small")]},
                "mock-echo": {"deployments": [deployment("mock", "mock-echo")]},
                "mock-chat": {"deployments": [deployment("mock", "mock-chat")]},
                "mock-embed": {"deployments": [deployment("mock", "mock-embed")]},
                "regional": {
                    "deployments": [
                        deployment("openai", "gpt-4o", "us"),
                        deployment("mock", "mock-echo", "eu"),
                    ]
                },
            },
        }
    )


@pytest.fixture
def client(url: str, openai_emu: OpenAIEmulator) -> Iterator[GatewayClient]:
    with GatewayClient(url, MASTER_KEY) as c:
        yield c


class Scripted:
    """A tiny stand-in gateway answering every POST with one scripted response; counts hits."""

    def __init__(self, response: Response) -> None:
        self.hits = 0
        self.response = response

        async def answer(request: Request) -> Response:
            self.hits += 1
            return self.response

        self.app = Starlette(routes=[Route("/v1/chat/completions", answer, methods=["POST"])])


@pytest.fixture
def scripted() -> Iterator[Any]:
    """Serve a Scripted app for a response on 127.0.0.1; returns (app, base URL)."""
    with ExitStack() as stack:

        def serve(response: Response) -> tuple[Scripted, str]:
            app = Scripted(response)
            return app, stack.enter_context(ServerThread(app.app)).url

        yield serve


# --- answers and facts ------------------------------------------------------------------------


def test_chat_returns_a_chat_completion_with_the_gateways_facts(client: GatewayClient) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=user("hello"))
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "echo: hello"
    facts = completion.facts
    assert (facts.provider, facts.deployment, facts.attempts) == ("openai", "openai/gpt-4o", 1)
    assert facts.fallback_used is False
    assert isinstance(facts.cost, Decimal) and facts.cost > 0
    assert facts.request_id and len(facts.request_id) == 32
    assert facts.overhead_ms is not None and facts.overhead_ms >= 0


def test_a_mock_answer_costs_zero(client: GatewayClient) -> None:
    completion = client.chat.completions.create(model="mock-echo", messages=user("say this"))
    assert completion.choices[0].message.content == "say this"
    assert completion.facts.provider == "mock"
    assert completion.facts.cost == Decimal("0")


def test_stream_text_joins_to_the_answer_without_a_usage_chunk(client: GatewayClient) -> None:
    stream = client.chat.completions.create(
        model="mock-echo", messages=user("one two three"), stream=True
    )
    chunks = list(stream)
    assert text_of(chunks) == "one two three"
    assert all(c.usage is None for c in chunks)
    assert stream.facts.provider == "mock" and stream.facts.request_id


def test_stream_with_include_usage_ends_with_a_usage_chunk(client: GatewayClient) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=user("hi there"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert text_of(chunks) == "echo: hi there"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])


def test_embeddings_return_vectors_and_facts(client: GatewayClient) -> None:
    result = client.embeddings.create(model="embed-small", input=["a", "b"])
    assert isinstance(result, CreateEmbeddingResponse)
    assert [e.index for e in result.data] == [0, 1]
    assert result.facts.provider == "openai"
    assert isinstance(result.facts.cost, Decimal)


def test_models_lists_what_the_gateway_serves(client: GatewayClient) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["gpt-4o", "embed-small", "mock-echo", "mock-chat", "mock-embed", "regional"]


def test_fallbacks_keyword_lets_the_gateway_fall_back(
    client: GatewayClient, openai_emu: OpenAIEmulator
) -> None:
    openai_emu.fail_next(UPSTREAM_500)
    completion = client.chat.completions.create(
        model="gpt-4o", messages=user("rescued"), fallbacks=["mock-echo"]
    )
    assert completion.choices[0].message.content == "rescued"
    assert completion.facts.fallback_used is True
    assert completion.facts.provider == "mock"


def test_regions_keyword_narrows_the_deployments(client: GatewayClient) -> None:
    in_us = client.chat.completions.create(model="regional", messages=user("hi"), regions=["us"])
    in_eu = client.chat.completions.create(model="regional", messages=user("hi"), regions=["eu"])
    assert (in_us.facts.provider, in_eu.facts.provider) == ("openai", "mock")


def test_user_and_metadata_travel_in_the_body(
    client: GatewayClient, openai_emu: OpenAIEmulator
) -> None:
    client.chat.completions.create(
        model="gpt-4o", messages=user("hi"), user="alice", metadata={"team": "search"}
    )
    assert openai_emu.requests[-1].body["user"] == "alice"


# --- failures -----------------------------------------------------------------------------


def test_unknown_model_raises_not_found_listing_the_models(client: GatewayClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=user("hi"))
    exc = caught.value
    assert (exc.status, exc.code, exc.param) == (404, "model_not_found", "model")
    assert "gpt-4o" in exc.message and "mock-echo" in exc.message
    assert exc.request_id and len(exc.request_id) == 32


def test_wrong_key_raises_authentication_error(url: str) -> None:
    with GatewayClient(url, "sk-wrong") as c, pytest.raises(AuthenticationError) as caught:
        c.models.list()
    assert caught.value.status == 401 and caught.value.request_id


def test_upstream_500_raises_upstream_error_naming_the_provider(
    client: GatewayClient, openai_emu: OpenAIEmulator
) -> None:
    openai_emu.fail_next(UPSTREAM_500)
    with pytest.raises(UpstreamError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    exc = caught.value
    assert exc.status == 500 and exc.provider == "openai" and "boom" in exc.message
    assert exc.request_id


def test_stream_cut_mid_answer_raises_stream_interrupted(
    client: GatewayClient, openai_emu: OpenAIEmulator
) -> None:
    openai_emu.fail_next(Fault(status=200, cut_after=2))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=user("a longer answer"), stream=True
    )
    received: list[ChatCompletionChunk] = []
    with pytest.raises(StreamInterruptedError) as caught:
        received.extend(stream)
    assert text_of(received) == "echo:"
    assert caught.value.request_id == stream.facts.request_id


def test_stream_ending_without_done_raises_stream_interrupted(scripted: Any) -> None:
    chunk = {"id": "c", "created": 0, "model": "m", "choices": [{"delta": {"content": "par"}}]}
    _, base = scripted(
        StreamingResponse(
            iter([b"data: " + orjson.dumps(chunk) + b"\n\n"]), media_type="text/event-stream"
        )
    )
    with GatewayClient(base) as c:
        stream = c.chat.completions.create(model="m", messages=user("hi"), stream=True)
        assert text_of([next(stream)]) == "par"
        with pytest.raises(StreamInterruptedError):
            next(stream)


def test_per_call_timeout_raises_gateway_timeout(
    client: GatewayClient, openai_emu: OpenAIEmulator
) -> None:
    openai_emu.fail_next(Fault(status=200, delay=3.0, body=b"{}"))
    started = time.monotonic()
    with pytest.raises(GatewayTimeoutError):
        client.chat.completions.create(model="gpt-4o", messages=user("hi"), timeout=0.5)
    assert time.monotonic() - started < 2.5


# --- retries ------------------------------------------------------------------------------


def test_retry_waits_for_the_gateways_retry_after_and_succeeds(
    client: GatewayClient, openai_emu: OpenAIEmulator
) -> None:
    openai_emu.fail_next(RATE_LIMITED)
    started = time.monotonic()
    completion = client.chat.completions.create(model="gpt-4o", messages=user("again"))
    assert time.monotonic() - started >= 0.95
    assert completion.choices[0].message.content == "echo: again"
    assert len(openai_emu.requests) == 2


def test_no_retry_when_max_retries_is_zero(url: str, openai_emu: OpenAIEmulator) -> None:
    openai_emu.fail_next(RATE_LIMITED)
    with GatewayClient(url, MASTER_KEY, max_retries=0) as c, pytest.raises(RateLimitError) as e:
        c.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert e.value.status == 429 and e.value.headers["retry-after"] == "1"
    assert len(openai_emu.requests) == 1


@pytest.mark.parametrize(
    ("code", "should_retry", "raised"),
    [
        ("budget_exceeded", "false", BudgetExceededError),
        ("budget_exceeded", None, BudgetExceededError),
        ("rate_limit_exceeded", "false", RateLimitError),
    ],
)
def test_refusals_the_gateway_says_not_to_retry_are_raised_at_once(
    scripted: Any, code: str, should_retry: str | None, raised: type[GatewayError]
) -> None:
    body = {"error": {"message": "no", "type": "insufficient_quota", "param": None, "code": code}}
    headers = {"retry-after": "1", "x-request-id": "req-1"}
    if should_retry:
        headers["x-should-retry"] = should_retry
    app, base = scripted(Response(orjson.dumps(body), status_code=429, headers=headers))
    with GatewayClient(base) as c, pytest.raises(raised) as caught:
        c.chat.completions.create(model="m", messages=user("hi"))
    assert app.hits == 1
    assert (caught.value.status, caught.value.code) == (429, code)
    assert caught.value.request_id == "req-1"


def test_connection_failures_are_retried_then_raised() -> None:
    started = time.monotonic()
    with (
        GatewayClient(f"http://127.0.0.1:{free_port()}", max_retries=1) as c,
        pytest.raises(GatewayConnectionError) as caught,
    ):
        c.models.list()
    assert time.monotonic() - started >= 0.35  # one backoff of 0.5 s x [0.75, 1]
    assert "127.0.0.1" in caught.value.message


# --- configuration and lifecycle ----------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_configuration_from_environment_with_or_without_v1(
    url: str, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_BASE_URL", url.removesuffix("/v1") + suffix)
    monkeypatch.setenv("GATEWAY_API_KEY", MASTER_KEY)
    with GatewayClient() as c:
        assert c.base_url == url
        assert c.chat.completions.create(model="mock-echo", messages=user("env")).facts.provider


def test_context_manager_closes_its_connections(url: str) -> None:
    with GatewayClient(url, MASTER_KEY) as c:
        c.models.list()
    assert c.is_closed


def test_injected_http_client_stays_open_and_keeps_its_settings(url: str) -> None:
    with httpx.Client(headers={"x-client-request-id": "mine"}) as http:
        with GatewayClient(url, MASTER_KEY, http_client=http) as c:
            c.models.list()
        assert not http.is_closed
        assert GatewayClient(url, MASTER_KEY, http_client=http).models.list()


def test_the_same_code_runs_in_process_and_against_the_proxy(url: str) -> None:
    def ask(gw: Gateway | GatewayClient) -> str | None:
        reply = gw.chat.completions.create(model="mock-echo", messages=user("same answer"))
        return reply.choices[0].message.content

    with Gateway() as gw:
        in_process = ask(gw)
    with GatewayClient(url, MASTER_KEY) as client:  # the one line that changes
        remote = ask(client)
    assert in_process == remote == "same answer"


# --- one set of facts, in-process or remote ----------------------------------------------------


def emulator_config(upstream: OpenAIEmulator, ledger: Path) -> dict[str, Any]:
    """An in-process gateway over the same emulator as the proxy, with a ledger of its own."""
    return {
        "routing": SINGLE_ATTEMPT,
        "ledger": {"url": f"sqlite+aiosqlite:///{ledger}"},
        "providers": {
            "openai": {"type": "openai", "api_key": API_KEY, "base_url": upstream.url + "/v1"},
            "mock": {"type": "mock"},
        },
        "models": {
            "gpt-4o": {"deployments": [deployment("openai", "gpt-4o")]},
            "regional": {
                "deployments": [
                    deployment("openai", "gpt-4o", "us"),
                    deployment("mock", "mock-echo", "eu"),
                ]
            },
        },
    }


def test_in_process_and_remote_answers_carry_the_same_facts(
    url: str, openai_emu: OpenAIEmulator, tmp_path: Path
) -> None:
    with Gateway(emulator_config(openai_emu, tmp_path / "ledger.db")) as gw:
        local = gw.chat.completions.create(model="gpt-4o", messages=user("same facts")).facts
    with GatewayClient(url, MASTER_KEY) as client:
        remote = client.chat.completions.create(model="gpt-4o", messages=user("same facts")).facts
    assert type(local) is type(remote) is GatewayFacts
    for facts in (local, remote):
        assert (facts.provider, facts.deployment, facts.attempts) == ("openai", "openai/gpt-4o", 1)
        assert facts.fallback_used is False and facts.usage_estimated is False
        assert facts.request_id and facts.overhead_ms is not None
    assert local.cost == remote.cost and isinstance(local.cost, Decimal) and local.cost > 0


def test_remote_stream_facts_gain_the_cost_when_the_stream_ends(client: GatewayClient) -> None:
    priced = client.chat.completions.create(model="gpt-4o", messages=user("what does it cost"))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=user("what does it cost"), stream=True
    )
    assert stream.facts.provider == "openai" and stream.facts.cost is None
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # usage was asked for the cost, not shown
    assert text_of(chunks) == "echo: what does it cost"
    assert stream.facts.cost == priced.facts.cost and stream.facts.cost is not None


def test_in_process_stream_facts_gain_the_cost_when_the_stream_ends(
    openai_emu: OpenAIEmulator, tmp_path: Path
) -> None:
    with Gateway(emulator_config(openai_emu, tmp_path / "ledger.db")) as gw:
        priced = gw.chat.completions.create(model="gpt-4o", messages=user("stream cost"))
        with gw.chat.completions.create(
            model="gpt-4o", messages=user("stream cost"), stream=True
        ) as stream:
            assert stream.facts.cost is None
            assert text_of(list(stream)) == "echo: stream cost"
        assert stream.facts.cost == priced.facts.cost and stream.facts.cost is not None


NO_USAGE = orjson.dumps(
    {
        "id": "chatcmpl-nousage",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "no usage here"},
                "finish_reason": "stop",
            }
        ],
    }
)


def test_usage_the_upstream_did_not_report_is_estimated_and_says_so(
    client: GatewayClient, openai_emu: OpenAIEmulator, tmp_path: Path
) -> None:
    openai_emu.fail_next(Fault(status=200, body=NO_USAGE))
    remote = client.chat.completions.create(model="gpt-4o", messages=user("count it")).facts
    openai_emu.fail_next(Fault(status=200, body=NO_USAGE))
    with Gateway(emulator_config(openai_emu, tmp_path / "ledger.db")) as gw:
        local = gw.chat.completions.create(model="gpt-4o", messages=user("count it")).facts
    for facts in (remote, local):
        assert facts.usage_estimated is True
        assert facts.cost is not None and facts.cost > 0
    normal = client.chat.completions.create(model="gpt-4o", messages=user("count it")).facts
    assert normal.usage_estimated is False


def test_in_process_calls_take_regions_and_metadata_like_remote_ones(
    openai_emu: OpenAIEmulator, tmp_path: Path
) -> None:
    with Gateway(emulator_config(openai_emu, tmp_path / "ledger.db")) as gw:
        in_us = gw.chat.completions.create(model="regional", messages=user("hi"), regions=["us"])
        in_eu = gw.chat.completions.create(
            model="regional", messages=user("hi"), regions=["eu"], metadata={"team": "search"}
        )
        assert (in_us.facts.provider, in_eu.facts.provider) == ("openai", "mock")
        with pytest.raises(PermissionDeniedError):  # no deployment of it is in that region
            gw.chat.completions.create(model="regional", messages=user("hi"), regions=["apac"])
    with Gateway(emulator_config(openai_emu, tmp_path / "ledger.db")) as gw:
        records = {r.request_id: r for r in gw.spend.records(since="1h")}
    assert records[in_eu.facts.request_id or ""].tags == {"team": "search"}
    assert records[in_us.facts.request_id or ""].tags == {}


# --- async --------------------------------------------------------------------------------


async def test_async_chat_and_facts(url: str, openai_emu: OpenAIEmulator) -> None:
    async with AsyncGatewayClient(url, MASTER_KEY) as c:
        completion = await c.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert completion.choices[0].message.content == "echo: hi"
    assert completion.facts.provider == "openai" and isinstance(completion.facts.cost, Decimal)
    assert c.is_closed


async def test_async_stream_text_joins(url: str) -> None:
    async with AsyncGatewayClient(url, MASTER_KEY) as c:
        stream = await c.chat.completions.create(
            model="mock-echo", messages=user("one two three"), stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert text_of(chunks) == "one two three"
    assert stream.facts.provider == "mock"


async def test_async_embeddings_and_models(url: str, openai_emu: OpenAIEmulator) -> None:
    async with AsyncGatewayClient(url, MASTER_KEY) as c:
        result = await c.embeddings.create(model="mock-embed", input="a")
        models = await c.models.list()
    assert len(result.data) == 1 and result.facts.provider == "mock"
    assert "mock-embed" in [m.id for m in models]


async def test_async_errors_are_typed(url: str, openai_emu: OpenAIEmulator) -> None:
    async with AsyncGatewayClient(url, MASTER_KEY) as c:
        with pytest.raises(NotFoundError) as missing:
            await c.chat.completions.create(model="nope", messages=user("hi"))
        openai_emu.fail_next(UPSTREAM_500)
        with pytest.raises(UpstreamError):
            await c.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert missing.value.request_id
    async with AsyncGatewayClient(url, "sk-wrong") as bad:
        with pytest.raises(AuthenticationError):
            await bad.models.list()


async def test_async_stream_cut_raises_stream_interrupted(
    url: str, openai_emu: OpenAIEmulator
) -> None:
    openai_emu.fail_next(Fault(status=200, cut_after=2))
    async with AsyncGatewayClient(url, MASTER_KEY) as c:
        stream = await c.chat.completions.create(model="gpt-4o", messages=user("x y"), stream=True)
        with pytest.raises(StreamInterruptedError):
            async for _ in stream:
                pass


async def test_async_retry_waits_for_retry_after(url: str, openai_emu: OpenAIEmulator) -> None:
    openai_emu.fail_next(RATE_LIMITED)
    started = time.monotonic()
    async with AsyncGatewayClient(url, MASTER_KEY) as c:
        completion = await c.chat.completions.create(model="gpt-4o", messages=user("again"))
    assert time.monotonic() - started >= 0.95
    assert completion.choices[0].message.content == "echo: again"


# --- types --------------------------------------------------------------------------------


def test_the_readme_usage_type_checks_under_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "tests/typing_user_script.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
