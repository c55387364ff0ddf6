"""``POST /v1/completions`` (OpenAI's legacy text completions) through a running gateway, with
the official openai SDK: sent to a provider's own /completions route where it has one, to
Mistral's FIM route for codestral, as one user message to chat models elsewhere — streamed or
not, priced, limited and recorded like chat, with a clear 400 when no deployment can."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest

from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators import mistral_api
from tests.emulators.common import Fault
from tests.emulators.mistral_api import MistralEmulator
from tests.emulators.openai_api import API_KEY as OPENAI_KEY
from tests.emulators.openai_completions import CompletionsEmulator
from tests.harness import ServerThread

MASTER = "sk-gw-completions-master"


@pytest.fixture(scope="module")
def openai_upstream() -> Iterator[CompletionsEmulator]:
    emulator = CompletionsEmulator(model_suffix="")
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture(scope="module")
def mistral_upstream() -> Iterator[MistralEmulator]:
    emulator = MistralEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def openai_emu(openai_upstream: CompletionsEmulator) -> CompletionsEmulator:
    openai_upstream.reset()
    return openai_upstream


@pytest.fixture
def mistral_emu(mistral_upstream: MistralEmulator) -> MistralEmulator:
    mistral_upstream.reset()
    return mistral_upstream


@pytest.fixture(scope="module")
def gateway(
    openai_upstream: CompletionsEmulator,
    mistral_upstream: MistralEmulator,
    start_gateway: GatewayFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """The gateway's root URL (no /v1), with a master key and a SQLite ledger."""
    ledger = tmp_path_factory.mktemp("completions") / "ledger.db"

    def one(provider: str, model: str, **more: Any) -> dict[str, Any]:
        return {"deployments": [{"provider": provider, "model": model, **more}]}

    url = start_gateway(
        {
            "auth": {"master_key": MASTER},
            "ledger": {"url": f"sqlite+aiosqlite:///{ledger}", "flush_interval": 0.05},
            "routing": SINGLE_ATTEMPT,
            "providers": {
                "openai": {
                    "type": "openai",
                    "api_key": OPENAI_KEY,
                    "base_url": openai_upstream.url + "/v1",
                },
                "mistral": {
                    "type": "mistral",
                    "api_key": mistral_api.API_KEY,
                    "base_url": mistral_upstream.url + "/v1",
                },
                "mock": {"type": "mock", "completion_tokens": 4},
                "mock-native": {"type": "mock", "capabilities": {"completions": True}},
            },
            "models": {
                "instruct": one("openai", "gpt-3.5-turbo-instruct"),
                "gpt-4o": one("openai", "gpt-4o"),
                "local-llama": one(
                    "openai",
                    "local-llama",
                    capabilities={"completions": True},
                    price={"input": 1, "output": 1},
                ),
                "codestral": one("mistral", "codestral-latest"),
                "mistral-large": one("mistral", "mistral-large-latest"),
                "mock": one("mock", "mock-1"),
                "mock-native": one("mock-native", "mock-echo"),
            },
        }
    )
    return url.removesuffix("/v1")


class SeenIds:
    """The gateway's x-request-id of each response a client received."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, response: httpx2.Response) -> None:
        self.ids.append(response.headers.get("x-request-id", ""))

    @property
    def last(self) -> str:
        return self.ids[-1]


@pytest.fixture
def seen() -> SeenIds:
    return SeenIds()


@pytest.fixture
def client(gateway: str, seen: SeenIds) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway + "/v1",
        api_key=MASTER,
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"response": [seen]}),
    )


def record(gateway: str, request_id: str) -> dict[str, Any]:
    """The ledger's record of one request, read back over the spend API once it is written."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        resp = httpx.get(
            gateway + "/v1/spend/records",
            params={"since": "1h", "limit": "1000"},
            headers={"authorization": f"Bearer {MASTER}"},
        )
        assert resp.status_code == 200, resp.text
        for item in resp.json()["data"]:
            if item["request_id"] == request_id:
                return dict(item)
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} was never recorded")


def assert_priced(rec: dict[str, Any]) -> None:
    assert rec["status"] == 200 and rec["operation"] == "completions"
    assert rec["cost_usd"] is not None and float(rec["cost_usd"]) > 0


# --- a provider's own /completions route ----------------------------------------------------


def test_instruct_model_is_sent_to_openais_completions_route_unchanged(
    gateway, client, seen, openai_emu
):
    answer = client.completions.create(
        model="instruct", prompt="Say hi", max_tokens=8, temperature=0, echo=True, logprobs=1
    )
    sent = openai_emu.requests[-1]
    assert sent.path == "/v1/completions"
    assert sent.body == {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "Say hi",
        "max_tokens": 8,
        "temperature": 0,
        "echo": True,
        "logprobs": 1,
    }
    assert answer.object == "text_completion"
    choice = answer.choices[0]
    assert choice.text == "Say hi echo: Say hi" and choice.finish_reason == "stop"
    assert choice.logprobs is not None and choice.logprobs.tokens == [" echo:", " Say", " hi"]
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    rec = record(gateway, seen.last)
    assert rec["model"] == "instruct" and rec["completion_tokens"] == 3
    assert_priced(rec)


def test_several_prompts_and_choices_from_the_native_route(client, openai_emu):
    answer = client.completions.create(model="instruct", prompt=["a", "b c"], n=2)
    assert [c.text for c in answer.choices] == [" echo: a"] * 2 + [" echo: b c"] * 2
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]


def test_native_stream_arrives_as_text_completion_chunks_with_usage(
    gateway, client, seen, openai_emu
):
    chunks = list(
        client.completions.create(
            model="instruct",
            prompt="tell me",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "text_completion" for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == " echo: tell me"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert openai_emu.requests[-1].body["stream_options"] == {"include_usage": True}
    rec = record(gateway, seen.last)
    assert rec["stream"] is True and rec["completion_tokens"] == 3
    assert_priced(rec)


def test_a_server_declared_with_completions_gets_them_natively(client, openai_emu):
    answer = client.completions.create(model="local-llama", prompt="x", max_tokens=4)
    assert openai_emu.requests[-1].path == "/v1/completions"
    assert answer.choices[0].text == " echo: x"


# --- translated: chat and FIM -----------------------------------------------------------------


def test_chat_model_gets_the_prompt_as_one_user_message(gateway, client, seen, openai_emu):
    answer = client.completions.create(
        model="gpt-4o", prompt="Say hi", max_tokens=8, stop=["\n"], user="u1"
    )
    sent = openai_emu.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 8,
        "stop": ["\n"],
        "user": "u1",
    }
    assert answer.object == "text_completion"
    assert answer.choices[0].text == "echo: Say hi"
    assert answer.choices[0].logprobs is None and answer.choices[0].finish_reason == "stop"
    rec = record(gateway, seen.last)
    assert rec["model"] == "gpt-4o"
    assert_priced(rec)


def test_chat_translated_stream_has_only_text_chunks(gateway, client, seen, openai_emu):
    chunks = list(client.completions.create(model="gpt-4o", prompt="one two", stream=True))
    assert chunks and all(c.object == "text_completion" for c in chunks)
    assert all(c.choices[0].text or c.choices[0].finish_reason for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == "echo: one two"
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is None
    assert openai_emu.requests[-1].path == "/v1/chat/completions"
    rec = record(gateway, seen.last)
    assert rec["stream"] is True
    assert_priced(rec)


def test_mistral_chat_model_gets_a_request_its_strict_api_accepts(client, mistral_emu):
    answer = client.completions.create(model="mistral-large", prompt="hello", seed=3)
    sent = mistral_emu.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "user", "content": "hello"}]
    assert sent.body["random_seed"] == 3
    assert answer.choices[0].text


def test_codestral_completion_with_a_suffix_goes_to_mistrals_fim_route(
    gateway, client, seen, mistral_emu
):
    answer = client.completions.create(
        model="codestral", prompt="def add(a, b):", suffix="return result", max_tokens=64
    )
    sent = mistral_emu.requests[-1]
    assert sent.path == "/v1/fim/completions"
    assert sent.body == {
        "model": "codestral-latest",
        "prompt": "def add(a, b):",
        "suffix": "return result",
        "max_tokens": 64,
    }
    assert answer.choices[0].text == "<fill between 'b):' and 'return'>"
    rec = record(gateway, seen.last)
    assert rec["completion_tokens"] == 5
    assert_priced(rec)


def test_codestral_stream_comes_from_the_fim_route(client, mistral_emu):
    chunks = list(client.completions.create(model="codestral", prompt="x = ", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "<fill between '=' and ''>"
    assert mistral_emu.requests[-1].path == "/v1/fim/completions"


def test_builtin_mock_answers_completions_streamed_and_not(client):
    answer = client.completions.create(model="mock", prompt="hello")
    assert answer.choices[0].text == "the gateway routes each"
    chunks = list(client.completions.create(model="mock", prompt="hello", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == answer.choices[0].text


def test_builtin_mock_declared_with_completions_answers_them_natively(client):
    answer = client.completions.create(model="mock-native", prompt="hello you", echo=True)
    assert answer.choices[0].text == "hello you hello you"
    chunks = list(client.completions.create(model="mock-native", prompt="a b", stream=True))
    assert [c.choices[0].text for c in chunks] == ["a", " b", ""]


# --- the same pipeline as chat -------------------------------------------------------------------


def test_failed_native_attempt_falls_back_to_a_chat_model(gateway, client, seen, openai_emu):
    openai_emu.fail_next(Fault(status=500, body=b'{"error": {"message": "boom"}}'))
    answer = client.completions.create(
        model="instruct", prompt="hi", extra_body={"fallbacks": ["gpt-4o"]}
    )
    assert [r.path for r in openai_emu.requests] == ["/v1/completions", "/v1/chat/completions"]
    assert answer.choices[0].text == "echo: hi"
    rec = record(gateway, seen.last)
    assert rec["fallback_used"] is True and rec["upstream_model"] == "gpt-4o"
    assert rec["attempts"] == 2
    assert_priced(rec)


def test_a_keys_model_allow_list_applies(gateway, openai_emu):
    created = httpx.post(
        gateway + "/admin/keys",
        json={"name": "only-gpt4o", "allowed_models": ["gpt-4o"]},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    resp = httpx.post(
        gateway + "/v1/completions",
        json={"model": "instruct", "prompt": "hi"},
        headers={"authorization": f"Bearer {key}"},
    )
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "model_not_allowed"
    assert openai_emu.requests == []
    ok = httpx.post(
        gateway + "/v1/completions",
        json={"model": "gpt-4o", "prompt": "hi"},
        headers={"authorization": f"Bearer {key}"},
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "echo: hi"
    assert float(ok.headers["x-gateway-cost"]) > 0


@pytest.mark.parametrize(
    ("extra", "needs"),
    [
        ({"suffix": "tail"}, "a suffix needs"),
        ({"echo": True}, "echo, best_of, logprobs"),
        ({"best_of": 3}, "echo, best_of, logprobs"),
        ({"logprobs": 2}, "echo, best_of, logprobs"),
        ({"prompt": ["a", "b"]}, "several prompts"),
        ({"prompt": [1, 2, 3]}, "token-id prompts"),
    ],
)
def test_what_a_chat_model_cannot_do_is_a_400_naming_the_models_that_can(
    gateway, openai_emu, extra, needs
):
    resp = httpx.post(
        gateway + "/v1/completions",
        json={"model": "gpt-4o", "prompt": "hi", **extra},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "unsupported_feature"
    assert needs in error["message"]
    able = error["message"].rsplit("models that can serve this request: ", 1)[1]
    expected = ["instruct", "local-llama", "mock-native"]
    if "suffix" in extra:
        expected = ["codestral", *expected]
    assert able.split(", ") == expected
    assert openai_emu.requests == []
    rec = record(gateway, resp.headers["x-request-id"])
    assert rec["operation"] == "completions" and rec["status"] == 400


def test_a_body_that_is_not_a_completion_request_is_a_400(gateway):
    resp = httpx.post(
        gateway + "/v1/completions",
        json={"model": "gpt-4o"},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert resp.status_code == 400 and "prompt" in resp.json()["error"]["message"]


def test_a_budget_reserves_for_every_candidate_best_of_generates(gateway, openai_emu):
    created = httpx.post(
        gateway + "/admin/keys",
        json={"name": "small-budget", "budget_usd": "0.001"},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert created.status_code == 201, created.text
    headers = {"authorization": f"Bearer {created.json()['key']}"}
    body = {"model": "instruct", "prompt": "hi", "max_tokens": 200}
    once = httpx.post(gateway + "/v1/completions", json=body, headers=headers)
    assert once.status_code == 200, once.text
    assert openai_emu.requests[-1].body["max_tokens"] == 200  # 200 x $2/1M fits $0.001
    five = httpx.post(gateway + "/v1/completions", json={**body, "best_of": 5}, headers=headers)
    assert five.status_code == 200, five.text
    capped = int(five.headers["x-gateway-budget-capped-max-tokens"])
    assert capped < 100  # five candidates of 200 tokens would not fit: each gets a fifth
    assert openai_emu.requests[-1].body["max_tokens"] == capped
