"""The response cache through the real proxy: hits, misses and bypasses, what is never
cached, tenants kept apart, expiry, stream replay, and hits on the books."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.emulators.common import Fault
from tests.emulators.openai_api import OpenAIEmulator
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config, key_records

QUESTION = [{"role": "user", "content": "what is the capital of France"}]


def cached_gateway(start_gateway: Any, emu: OpenAIEmulator, tmp_path: Path, **cache: Any) -> str:
    config = gateway_config(emu.url, tmp_path / "ledger.db", cache={"enabled": True, **cache})
    return str(start_gateway(config))


def ask(
    base: str, key: str = MASTER_KEY, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    body.setdefault("messages", QUESTION)
    body.setdefault("temperature", 0)
    return chat(base, key, headers=headers, **body)


def upstream_calls(emu: OpenAIEmulator) -> int:
    return len(emu.requests)


def sse_chunks(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(orjson.loads(line[6:]))
    return out


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or "" for ch in chunks for c in ch["choices"]
    )


def test_second_identical_request_is_a_hit_and_skips_the_upstream(
    start_gateway, openai_emu, tmp_path
):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    first = ask(base)
    second = ask(base)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-gateway-cache"] == "miss"
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.headers["x-gateway-cost"] == "0"
    assert second.json()["choices"] == first.json()["choices"]
    assert upstream_calls(openai_emu) == 1


def test_key_order_and_default_values_do_not_change_the_key(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    assert ask(base).headers["x-gateway-cache"] == "miss"
    same = httpx.post(
        base + "/chat/completions",
        content=orjson.dumps(
            {
                "temperature": 0.0,
                "n": 1,
                "top_p": 1,
                "messages": [
                    {
                        "content": [{"type": "text", "text": QUESTION[0]["content"]}],
                        "role": "user",
                        "name": None,
                    }
                ],
                "model": "gpt-4o",
                "stream": False,
                "user": "someone",
            }
        ),
        headers={"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"},
    )
    assert same.headers["x-gateway-cache"] == "hit"
    different = ask(base, max_tokens=5)
    assert different.headers["x-gateway-cache"] == "miss"
    assert upstream_calls(openai_emu) == 2


def test_no_cache_answers_afresh_and_no_store_keeps_nothing(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    fresh = ask(base, headers={"x-gateway-cache": "no-cache"})
    assert fresh.headers["x-gateway-cache"] == "bypass"
    assert ask(base).headers["x-gateway-cache"] == "hit"  # no-cache still kept its answer
    assert ask(base, headers={"x-gateway-cache": "no-cache"}).headers["x-gateway-cache"] == (
        "bypass"
    )
    assert upstream_calls(openai_emu) == 2
    other = [{"role": "user", "content": "not kept"}]
    assert (
        ask(base, messages=other, headers={"x-gateway-cache": "no-store"}).headers[
            "x-gateway-cache"
        ]
        == "bypass"
    )
    assert ask(base, messages=other).headers["x-gateway-cache"] == "miss"


def test_a_bad_ttl_directive_is_refused_with_400(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    response = ask(base, headers={"x-gateway-cache": "ttl=soon"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-gateway-cache"
    assert upstream_calls(openai_emu) == 0


def test_sampled_answers_are_not_cached_unless_opted_in(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    sampled: list[dict[str, Any]] = [{"temperature": 0.7}, {}]
    for body in sampled:
        answers = [chat(base, MASTER_KEY, messages=QUESTION, **body) for _ in range(2)]
        assert [a.headers["x-gateway-cache"] for a in answers] == ["bypass", "bypass"]
    assert upstream_calls(openai_emu) == 4
    opted = [
        chat(
            base,
            MASTER_KEY,
            messages=QUESTION,
            temperature=0.7,
            headers={"x-gateway-cache": "sampled"},
        )
        for _ in range(2)
    ]
    assert [a.headers["x-gateway-cache"] for a in opted] == ["miss", "hit"]


def test_a_model_may_opt_in_to_caching_sampled_answers(start_gateway, openai_emu, tmp_path):
    config = gateway_config(openai_emu.url, tmp_path / "ledger.db", cache={"enabled": True})
    config["models"]["gpt-4o-mini"]["cache"] = {"sampled": True}
    base = start_gateway(config)
    answers = [chat(base, MASTER_KEY, model="gpt-4o-mini", messages=QUESTION) for _ in range(2)]
    assert [a.headers["x-gateway-cache"] for a in answers] == ["miss", "hit"]


def test_several_choices_are_never_cached(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    answers = [ask(base, n=2) for _ in range(2)]
    assert [a.headers["x-gateway-cache"] for a in answers] == ["bypass", "bypass"]
    assert upstream_calls(openai_emu) == 2


def test_errors_are_never_cached(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    openai_emu.fail_next(Fault(status=400, body=b'{"error": {"message": "bad"}}'))
    assert ask(base).status_code == 400
    again = ask(base)
    assert again.status_code == 200
    assert again.headers["x-gateway-cache"] == "miss"


def test_a_model_with_the_cache_off_is_a_bypass(start_gateway, openai_emu, tmp_path):
    config = gateway_config(openai_emu.url, tmp_path / "ledger.db", cache={"enabled": True})
    config["models"]["gpt-4o-mini"]["cache"] = {"enabled": False}
    base = start_gateway(config)
    answers = [ask(base, model="gpt-4o-mini") for _ in range(2)]
    assert [a.headers["x-gateway-cache"] for a in answers] == ["bypass", "bypass"]


def test_no_header_when_the_cache_is_off(start_gateway, openai_emu, tmp_path):
    base = start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db"))
    answer = ask(base)
    assert answer.status_code == 200
    assert "x-gateway-cache" not in answer.headers


def test_two_teams_never_share_an_answer_and_a_team_shares_its_own(
    start_gateway, openai_emu, tmp_path
):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    admin = Admin(base)
    admin.create_team(name="red")
    admin.create_team(name="blue")
    red1 = admin.create_key(name="r1", team="red")["key"]
    red2 = admin.create_key(name="r2", team="red")["key"]
    blue = admin.create_key(name="b1", team="blue")["key"]
    alone1 = admin.create_key(name="alone1")["key"]
    alone2 = admin.create_key(name="alone2")["key"]
    assert ask(base, red1).headers["x-gateway-cache"] == "miss"
    assert ask(base, red2).headers["x-gateway-cache"] == "hit"
    assert ask(base, blue).headers["x-gateway-cache"] == "miss"
    # A key without a team is its own scope.
    assert ask(base, alone1).headers["x-gateway-cache"] == "miss"
    assert ask(base, alone2).headers["x-gateway-cache"] == "miss"
    assert ask(base, alone1).headers["x-gateway-cache"] == "hit"


def test_global_scope_shares_answers_across_teams(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path, scope="global")
    admin = Admin(base)
    one = admin.create_key(name="one")["key"]
    two = admin.create_key(name="two")["key"]
    assert ask(base, one).headers["x-gateway-cache"] == "miss"
    assert ask(base, two).headers["x-gateway-cache"] == "hit"


def test_key_scope_keeps_the_keys_of_one_team_apart(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path, scope="key")
    admin = Admin(base)
    admin.create_team(name="green")
    one = admin.create_key(name="g1", team="green")["key"]
    two = admin.create_key(name="g2", team="green")["key"]
    assert ask(base, one).headers["x-gateway-cache"] == "miss"
    assert ask(base, two).headers["x-gateway-cache"] == "miss"
    assert ask(base, one).headers["x-gateway-cache"] == "hit"


def test_per_user_keeps_each_end_users_answers_apart(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path, per_user=True)
    assert ask(base, user="ann").headers["x-gateway-cache"] == "miss"
    assert ask(base, user="bob").headers["x-gateway-cache"] == "miss"
    assert ask(base, headers={"x-gateway-user": "ann"}).headers["x-gateway-cache"] == "hit"


def test_a_hit_needs_the_model_to_be_allowed_to_the_key(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path, scope="global")
    admin = Admin(base)
    allowed = admin.create_key(name="all")["key"]
    narrow = admin.create_key(name="narrow", allowed_models=["gpt-4o-mini"])["key"]
    assert ask(base, allowed).headers["x-gateway-cache"] == "miss"
    refused = ask(base, narrow)
    assert refused.status_code == 403


def test_a_short_ttl_expires(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    ttl = {"x-gateway-cache": "ttl=0.2"}
    assert ask(base, headers=ttl).headers["x-gateway-cache"] == "miss"
    assert ask(base).headers["x-gateway-cache"] == "hit"

    async def expired() -> None:
        for _ in range(50):
            await asyncio.sleep(0.05)
            if ask(base).headers["x-gateway-cache"] == "miss":
                return
        pytest.fail("the answer outlived its ttl")

    asyncio.run(expired())


def test_a_stream_replays_the_cached_answer_with_its_usage(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    first = ask(base, stream=True, stream_options={"include_usage": True})
    assert first.headers["x-gateway-cache"] == "miss"
    original = sse_chunks(first.text)
    second = ask(base, stream=True, stream_options={"include_usage": True})
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second.text.endswith("data: [DONE]\n\n")
    replayed = sse_chunks(second.text)
    assert streamed_text(replayed) == streamed_text(original) == "echo: " + QUESTION[0]["content"]
    assert all(c["object"] == "chat.completion.chunk" for c in replayed)
    assert replayed[-1]["choices"] == [] and replayed[-1]["usage"]["completion_tokens"] > 0
    finishes = [c["finish_reason"] for ch in replayed for c in ch["choices"] if c["finish_reason"]]
    assert finishes == ["stop"]
    # A streamed answer answers a plain request too, and the other way round.
    plain = ask(base)
    assert plain.headers["x-gateway-cache"] == "hit"
    assert plain.json()["choices"][0]["message"]["content"] == streamed_text(original)
    assert upstream_calls(openai_emu) == 1


def test_a_stream_without_usage_replays_without_it(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    ask(base)
    replayed = sse_chunks(ask(base, stream=True).text)
    assert all(ch["choices"] for ch in replayed)
    assert streamed_text(replayed) == "echo: " + QUESTION[0]["content"]


def test_a_cut_stream_is_never_cached(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    openai_emu.fail_next(Fault(status=200, cut_after=3))
    ask(base, stream=True)
    again = ask(base, stream=True)
    assert again.headers["x-gateway-cache"] == "miss"
    assert streamed_text(sse_chunks(again.text)) == "echo: " + QUESTION[0]["content"]


def test_tool_call_answers_are_cached_and_replayed_whole(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    first = ask(base, tools=tools, stream=True)
    second = ask(base, tools=tools)
    assert second.headers["x-gateway-cache"] == "hit"
    call = second.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Paris", "unit": "c"}'}
    assert first.status_code == 200


def test_embeddings_are_cached(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)

    def embed(inputs: Any) -> httpx.Response:
        return httpx.post(
            base + "/embeddings",
            json={"model": "text-embedding-3-small", "input": inputs},
            headers={"authorization": f"Bearer {MASTER_KEY}"},
        )

    first, second = embed("hello world"), embed(["hello world"])
    assert first.headers["x-gateway-cache"] == "miss"
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.json()["data"] == first.json()["data"]
    assert embed("other").headers["x-gateway-cache"] == "miss"


def test_an_answer_above_max_entry_bytes_is_not_kept(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path, max_entry_bytes=64)
    assert [ask(base).headers["x-gateway-cache"] for _ in range(2)] == ["miss", "miss"]


def test_a_hit_is_on_the_books_with_cost_0_and_what_it_saved(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    admin = Admin(base)
    created = admin.create_key(name="saver")
    key = created["key"]
    miss = ask(base, key)
    hit = ask(base, key)
    records = asyncio.run(key_records(tmp_path / "ledger.db", created["id"], at_least=2))
    by_id = {r.request_id: r for r in records}
    original = by_id[miss.headers["x-request-id"]]
    cached = by_id[hit.headers["x-request-id"]]
    assert original.cache_hit is False and original.saved_usd is None
    assert original.cost_usd is not None and original.cost_usd > 0
    assert cached.cache_hit is True
    assert cached.cost_usd == Decimal(0)
    assert cached.saved_usd == original.cost_usd
    assert cached.prompt_tokens == cached.completion_tokens == 0
    report = httpx.get(
        base + "/spend",
        params={"group_by": "key"},
        headers={"authorization": f"Bearer {MASTER_KEY}"},
    ).json()
    assert Decimal(report["savings"]["saved_usd"]) == original.cost_usd
    assert report["savings"]["cache_hits"] == 1


def test_metrics_count_hits_misses_and_bytes(start_gateway, openai_emu, tmp_path):
    base = cached_gateway(start_gateway, openai_emu, tmp_path)
    ask(base)
    ask(base)
    ask(base, n=2)
    metrics = httpx.get(base.removesuffix("/v1") + "/metrics").text
    assert 'gateway_cache_requests_total{model="gpt-4o",outcome="hit"} 1.0' in metrics
    assert 'gateway_cache_requests_total{model="gpt-4o",outcome="miss"} 1.0' in metrics
    assert 'gateway_cache_requests_total{model="gpt-4o",outcome="bypass"} 1.0' in metrics
    stored = [
        line
        for line in metrics.splitlines()
        if line.startswith('gateway_cache_stored_bytes_total{model="gpt-4o"}')
    ]
    assert stored and float(stored[0].split()[-1]) > 100
    assert 'gateway_deployment_prompt_tokens_total{deployment="openai/gpt-4o",kind="prompt"}' in (
        metrics
    )


def test_redis_cache_is_shared_by_two_gateways(start_gateway, openai_emu, tmp_path, redis_url):
    prefix = f"test-cache-{uuid.uuid4().hex}:"
    try:
        bases = []
        for name in ("a", "b"):
            config = gateway_config(
                openai_emu.url,
                tmp_path / f"ledger-{name}.db",
                cache={"enabled": True, "backend": "redis"},
                redis={"url": redis_url, "key_prefix": prefix},
            )
            bases.append(start_gateway(config))
        first = ask(bases[0])
        assert first.headers["x-gateway-cache"] == "miss"

        async def shared() -> httpx.Response:
            for _ in range(50):  # the answer is written just after it went out
                answer: httpx.Response = ask(bases[1])
                if answer.headers["x-gateway-cache"] == "hit":
                    return answer
                await asyncio.sleep(0.02)
            pytest.fail("the second gateway never saw the first one's answer")

        hit: httpx.Response = asyncio.run(shared())
        assert hit.json()["choices"] == first.json()["choices"]
        import redis

        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=prefix + "cache:*"))
            assert keys and all(0 < client.pttl(k) <= 3_600_000 for k in keys)
        finally:
            client.close()
    finally:
        from tests.replica_helpers import forget_redis_keys

        forget_redis_keys(redis_url, prefix)


def test_legacy_text_completions_are_cached_by_their_whole_body(
    start_gateway, openai_emu, tmp_path
):
    """/v1/completions (answered through chat here) is cached like FIM; several answers
    (``n`` > 1) are never cached."""
    base = cached_gateway(start_gateway, openai_emu, tmp_path)

    def complete(**extra: Any) -> httpx.Response:
        body = {"model": "gpt-4o", "prompt": "Say hi", "temperature": 0, **extra}
        return httpx.post(
            base + "/completions", json=body, headers={"authorization": f"Bearer {MASTER_KEY}"}
        )

    first, second = complete(), complete()
    assert [first.status_code, second.status_code] == [200, 200], first.text
    assert [first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]] == ["miss", "hit"]
    assert second.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
    assert complete(n=2).headers["x-gateway-cache"] == "bypass"
