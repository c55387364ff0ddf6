"""No secret reaches a caller through an upstream's error text.

An upstream that quotes the request's ``Authorization`` header back in its error message
would hand the provider key to whoever holds a virtual key. Every configured secret (provider
keys, the master key) and anything shaped like a bearer token or an ``sk-`` key is replaced
by ``[redacted]`` — in JSON errors, in SSE error events, and in the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import redact, register_secrets
from gateway.server import create_app
from tests.emulators.common import sse
from tests.emulators.openai_api import chunks, completion
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, key_records

PROVIDER_KEY = "prov-secret-0123456789"  # not shaped like any known key: only config knows it
STRANGER_TOKEN = "sk-proj-abcdefghijklmnopqrstuvwx"  # a key the gateway never configured


def quoting(request: Request) -> str:
    """What a careless upstream says: the caller's credentials, quoted."""
    return (
        f"Incorrect API key provided: {request.headers.get('authorization')}; "
        f"raw {PROVIDER_KEY}; master {MASTER_KEY}; other {STRANGER_TOKEN}; "
        "Authorization: Bearer abc.def-ghi_jkl"
    )


async def chat(request: Request) -> Response:
    body = await request.json()
    if body["model"] == "quotes-in-json":
        error = {"message": quoting(request), "type": "invalid_request_error", "param": None}
        return JSONResponse({"error": {**error, "code": "invalid_api_key"}}, status_code=401)
    answer = completion(body, body["model"])

    async def events() -> AsyncIterator[bytes]:
        yield sse(chunks(answer, False)[0])
        yield sse({"error": {"message": quoting(request), "type": "server_error"}})

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    db = tmp_path_factory.mktemp("redaction") / "ledger.db"
    with ServerThread(app) as upstream:
        provider = {"type": "openai", "api_key": PROVIDER_KEY, "base_url": upstream.url + "/v1"}
        config: dict[str, Any] = {
            "auth": {"master_key": MASTER_KEY},
            "routing": {"retries": {"attempts_per_deployment": 1}, "circuit": {"enabled": False}},
            "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
            "providers": {"p": provider},
            "models": {
                name: {"deployments": [{"provider": "p", "model": name}]}
                for name in ("quotes-in-json", "quotes-mid-stream")
            },
        }
        with ServerThread(create_app(config)) as gateway:
            yield gateway.url + "/v1", db


def leaks(text: str, key: str) -> list[str]:
    secrets = [PROVIDER_KEY, MASTER_KEY, STRANGER_TOKEN, key, "abc.def-ghi_jkl"]
    return [s for s in secrets if s in text]


def test_an_upstream_error_quoting_credentials_reaches_the_caller_redacted(
    served: tuple[str, Path],
) -> None:
    url, db = served
    key = Admin(url).create_key(name="caller")
    answer = httpx.post(
        url + "/chat/completions",
        json={"model": "quotes-in-json", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {key['key']}"},
        timeout=10,
    )

    assert answer.status_code == 401
    message = answer.json()["error"]["message"]
    assert "Incorrect API key provided" in message and "[redacted]" in message
    assert leaks(answer.text, key["key"]) == []
    records = asyncio.run(key_records(db, key["id"]))
    assert records and leaks(repr(records), key["key"]) == []


def test_an_upstream_error_event_quoting_credentials_reaches_the_stream_redacted(
    served: tuple[str, Path],
) -> None:
    url, _ = served
    key = Admin(url).create_key(name="streamer")
    with httpx.stream(
        "POST",
        url + "/chat/completions",
        json={
            "model": "quotes-mid-stream",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
        headers={"authorization": f"Bearer {key['key']}"},
        timeout=10,
    ) as answer:
        text = answer.read().decode()

    assert '"error"' in text and "[redacted]" in text
    assert leaks(text, key["key"]) == []


def test_redact_replaces_registered_secrets_and_credential_shapes() -> None:
    register_secrets(["configured-value-42"])
    text = redact(
        "key configured-value-42, Bearer eyJhbGciOi.x-y, sk-gw-AAAAAAAAAAAAAAAA, sk-gw-abcdef"
    )
    assert (
        text == "key [redacted], [redacted], [redacted], sk-gw-abcdef"
    )  # a listing's prefix stays
