"""A user's script, as the README shows the library and the client: ``mypy --strict`` must
accept it (tests/test_client.py runs it). It is only type-checked, never run."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from gateway import (
    AsyncGatewayClient,
    Gateway,
    GatewayClient,
    GatewayError,
    GatewayFacts,
    NotFoundError,
    RateLimitError,
)
from gateway.types import ChatCompletion, ChatCompletionChunk, Model

MESSAGES = [{"role": "user", "content": "hi"}]


def ask(gw: Gateway | GatewayClient) -> str:
    reply: ChatCompletion = gw.chat.completions.create(model="mock-echo", messages=MESSAGES)
    return reply.choices[0].message.content or ""


def remote() -> Decimal | None:
    with GatewayClient("http://127.0.0.1:4000", "sk-key", timeout=30.0, max_retries=1) as c:
        reply = c.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            fallbacks=["mock-echo"],
            regions=["eu"],
            metadata={"team": "search"},
            user="alice",
            timeout=10.0,
            temperature=0.2,
        )
        facts: GatewayFacts = reply.facts
        attempts: int | None = facts.attempts
        print(facts.provider, facts.deployment, attempts, facts.fallback_used)
        stream = c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        chunks: list[ChatCompletionChunk] = list(stream)
        print(len(chunks), stream.facts.request_id)
        vectors = c.embeddings.create(model="mock-embed", input=["a", "b"])
        print(vectors.data[0].embedding, vectors.facts.cost)
        models: list[Model] = c.models.list()
        print([m.id for m in models])
        try:
            c.chat.completions.create(model="nope", messages=MESSAGES)
        except NotFoundError as exc:
            print(exc.status, exc.code, exc.message, exc.request_id)
        except RateLimitError as exc:
            print(exc.headers.get("retry-after"))
        except GatewayError as exc:
            request_id: str | None = exc.request_id
            print(request_id)
        return facts.cost


def in_process() -> str:
    with Gateway() as gw:
        reply = gw.chat.completions.create(
            model="mock-echo", messages=MESSAGES, regions=["eu"], metadata={"team": "search"}
        )
        same: GatewayFacts = reply.facts  # the same facts type as a remote answer's
        cost: Decimal | None = same.cost
        estimated: bool = same.usage_estimated
        print(cost, estimated)
        with gw.chat.completions.create(model="mock-chat", messages=MESSAGES, stream=True) as s:
            for chunk in s:
                print(chunk.choices[0].delta.content if chunk.choices else "")
        print(s.facts.cost)
        attempts: int = reply.gateway.attempts if reply.gateway is not None else 0
        created = gw.keys.create(name="ci", rpm=60, budget_usd=Decimal("2.5"))
        key: str = created.key
        print(attempts, key[:6], [k.prefix for k in gw.keys.list()])
        return reply.choices[0].message.content or ""


async def remote_async() -> int:
    async with AsyncGatewayClient() as c:
        reply = await c.chat.completions.create(model="mock-echo", messages=MESSAGES)
        stream = await c.chat.completions.create(model="mock-chat", messages=MESSAGES, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        vectors = await c.embeddings.create(model="mock-embed", input="a")
        return len(text) + len(vectors.data) + len(reply.choices)


if __name__ == "__main__":
    print(ask(Gateway()), ask(GatewayClient()), remote(), in_process())
    print(asyncio.run(remote_async()))
