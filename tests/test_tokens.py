"""Offline token counting: the right table per model, known counts, threads for long texts."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from gateway.costs import tokens
from gateway.costs.catalog import PriceCatalog
from gateway.costs.compute import compute_cost
from gateway.costs.tokens import (
    count_tokens,
    count_tokens_sync,
    estimate_usage,
    estimate_usage_async,
    tokenizer_name,
)

# The example of OpenAI's cookbook "How to count tokens with tiktoken", whose prompt the API
# bills as 129 tokens for gpt-4 (cl100k_base) and 124 for gpt-4o (o200k_base).
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more time to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.mark.parametrize(
    ("family", "model", "table"),
    [
        ("openai", "gpt-4o", "o200k_base"),
        ("openai", "gpt-4o-mini-2024-07-18", "o200k_base"),
        ("openai", "gpt-4.1-nano", "o200k_base"),
        ("openai", "o3", "o200k_base"),
        ("openai", "o4-mini", "o200k_base"),
        ("openai", "gpt-5-mini", "o200k_base"),
        ("openai", "gpt-4", "cl100k_base"),
        ("openai", "gpt-35-turbo", "cl100k_base"),
        ("openai", "text-embedding-3-small", "cl100k_base"),
        ("openai", "text-embedding-3-large", "cl100k_base"),
        ("openai", "llama-3.1-8b", "o200k_base"),  # an OpenAI-compatible server: closest guess
        ("mistral", "mistral-large-2411", "mistral:mistral_instruct_tokenizer_241114.model.v7"),
        ("mistral", "mistral-large-latest", "mistral:mistral_instruct_tokenizer_241114.model.v7"),
        ("mistral", "Mistral-Large-2411", "mistral:mistral_instruct_tokenizer_241114.model.v7"),
        ("mistral", "mistral-large-2407", "mistral:mistral_instruct_tokenizer_240323.model.v3"),
        ("mistral", "codestral-2405", "mistral:mistral_instruct_tokenizer_240323.model.v3"),
        ("mistral", "mistral-small-latest", "mistral:tekken_240718.json"),
        ("mistral", "ministral-8b-latest", "mistral:tekken_240718.json"),
        ("mistral", "codestral-latest", "mistral:tekken_240718.json"),
        ("mistral", "mistral-embed", "mistral:tokenizer.model.v1"),
        ("mistral", "some-new-model", "mistral:tekken_240718.json"),
        ("openai", "open-mistral-nemo", "mistral:tekken_240718.json"),  # served by vLLM
    ],
)
def test_each_model_is_counted_with_its_table(family: str, model: str, table: str) -> None:
    assert tokenizer_name(family, model) == table


def test_hello_world_is_two_tokens_in_openai_tables() -> None:
    assert count_tokens_sync("hello world", "openai", "gpt-4o") == 2  # o200k_base
    assert count_tokens_sync("hello world", "openai", "text-embedding-3-small") == 2  # cl100k


def test_known_cl100k_and_o200k_counts() -> None:
    # OpenAI's cookbook: "tiktoken is great!" is 6 tokens in cl100k_base.
    assert count_tokens_sync("tiktoken is great!", "openai", "gpt-4") == 6
    assert count_tokens_sync("tiktoken is great!", "openai", "gpt-4o") == 6
    assert count_tokens_sync("", "openai", "gpt-4o") == 0


def test_mistral_counts_with_the_bundled_tables() -> None:
    # Pinned from mistral-common's bundled files: Tekken splits "hello world" in two,
    # the SentencePiece tables (with their leading-space marker) in three.
    assert count_tokens_sync("hello world", "mistral", "mistral-small-latest") == 2
    assert count_tokens_sync("hello world", "mistral", "mistral-large-2411") == 3
    assert count_tokens_sync("hello world", "mistral", "mistral-embed") == 3


def test_chat_prompt_estimate_matches_what_openai_bills_for_the_cookbook_example() -> None:
    assert estimate_usage(COOKBOOK_MESSAGES, "", "openai", "gpt-4")["prompt_tokens"] == 129
    assert estimate_usage(COOKBOOK_MESSAGES, "", "openai", "gpt-4o")["prompt_tokens"] == 124


def test_estimated_usage_has_openai_shape_and_names_its_table() -> None:
    usage = estimate_usage(
        [{"role": "user", "content": "hello world"}], "hello world", "openai", "gpt-4o"
    )
    # prompt: 3 reply priming + 3 per message + 1 for "user" + 2 for "hello world"
    assert usage == {
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "total_tokens": 11,
        "estimated_by": "o200k_base",
    }


def test_estimate_counts_text_parts_tool_calls_and_tools() -> None:
    plain = estimate_usage([{"role": "user", "content": "hi"}], "", "openai", "gpt-4o")
    parts = estimate_usage(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
        "",
        "openai",
        "gpt-4o",
    )
    assert parts["prompt_tokens"] == plain["prompt_tokens"]  # images are not counted
    with_call = estimate_usage(
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            }
        ],
        "",
        "openai",
        "gpt-4o",
    )
    assert with_call["prompt_tokens"] > plain["prompt_tokens"]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with_tools = estimate_usage(
        [{"role": "user", "content": "hi"}], "", "openai", "gpt-4o", tools=tools
    )
    assert with_tools["prompt_tokens"] > plain["prompt_tokens"]


def test_several_choices_count_every_completion() -> None:
    usage = estimate_usage([], ["hello world", "hello world"], "openai", "gpt-4o")
    assert usage["completion_tokens"] == 4


def test_an_estimate_prices_as_an_estimated_cost() -> None:
    usage = estimate_usage(
        [{"role": "user", "content": "hello world"}], "hello world", "openai", "gpt-4o"
    )
    cost = compute_cost(usage, PriceCatalog.shipped().lookup("openai", "gpt-4o"))
    assert cost.estimated
    # 9 x 2.50 / 1M = 0.0000225; 2 x 10 / 1M = 0.00002
    assert cost.usd_str() == "0.0000425"


def test_a_text_longer_than_bpe_openai_accepts_in_one_piece_is_counted_in_pieces() -> None:
    # "hello" then " hello" are one token each, and the trailing space one more.
    assert count_tokens_sync("hello " * 1000, "openai", "gpt-4o") == 1001
    text = "hello " * 300_000  # 1.8M characters, cut in pieces before a space
    assert count_tokens_sync(text, "openai", "gpt-4o") == 300_001


async def test_long_texts_are_counted_in_a_thread_so_the_loop_keeps_running() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 60_000  # 2.7 MB
    expected = count_tokens_sync(text, "openai", "gpt-4o")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    started = time.perf_counter()
    counted = await count_tokens(text, "openai", "gpt-4o")
    elapsed = time.perf_counter() - started
    during = ticks - before
    task.cancel()

    assert counted == expected
    assert elapsed > 0.005  # long enough that a blocked loop could not have ticked
    assert during > 10, f"the loop ticked {during} times in {elapsed:.3f}s"


async def test_short_texts_are_counted_inline_once_the_table_is_loaded() -> None:
    count_tokens_sync("warm", "openai", "gpt-4o")
    assert tokens.is_loaded("openai", "gpt-4o")
    assert await count_tokens("hello world", "openai", "gpt-4o") == 2


async def test_async_estimate_equals_the_sync_one() -> None:
    messages = [{"role": "user", "content": "word " * 5000}]
    expected = estimate_usage(messages, "done", "mistral", "mistral-small-latest")
    assert await estimate_usage_async(messages, "done", "mistral", "mistral-small-latest") == (
        expected
    )


def test_a_table_that_cannot_load_falls_back_to_chars_over_four(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tokens, "_loaded", {})
    monkeypatch.setitem(sys.modules, "bpe_openai", None)  # as if it were not installed

    assert count_tokens_sync("hello world!", "openai", "gpt-4o") == 3  # 12 characters / 4
    usage = estimate_usage([], "hello", "openai", "gpt-4o")
    assert usage["estimated_by"] == "chars/4"
    assert "tokenizer o200k_base cannot be loaded" in caplog.text
