"""An upstream whose bill the test writes: it answers each chat completion with the model
name, usage and ``service_tier`` it was given, in OpenAI's wire format.

It serves the paths of OpenAI and Mistral (``/v1/chat/completions``) and Azure OpenAI
(``/openai/deployments/{name}/chat/completions``), so one instance stands behind providers of
every type while a cost test fixes exactly what the provider reports: which snapshot
answered, how many tokens of each kind, on which tier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.emulators.common import EmulatorBase, json_response, sse, sse_response
from tests.emulators.openai_api import chunks


@dataclass
class Bill:
    """What the next answers report."""

    model: str = "gpt-4o-2024-08-06"
    usage: dict[str, Any] = field(
        default_factory=lambda: {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    )
    service_tier: str | None = None


class BilledEmulator(EmulatorBase):
    def __init__(self) -> None:
        super().__init__()
        self.bill = Bill()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route(
                    "/openai/deployments/{deployment}/chat/completions",
                    self.chat,
                    methods=["POST"],
                ),
            ]
        )

    def answer(self, model: str, usage: dict[str, Any], service_tier: str | None = None) -> None:
        """Report ``model``, ``usage`` and ``service_tier`` from now on."""
        self.bill = Bill(model, usage, service_tier)

    def reset(self) -> None:
        super().reset()
        self.bill = Bill()

    async def chat(self, request: Request) -> Response:
        recorded = await self.record(request)
        body = recorded.body or {}
        answer: dict[str, Any] = {
            "id": "chatcmpl-billed",
            "object": "chat.completion",
            "created": 1_760_000_000,
            "model": self.bill.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "priced", "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": self.bill.usage,
            "system_fingerprint": "fp_billed",
        }
        if self.bill.service_tier is not None:
            answer["service_tier"] = self.bill.service_tier
        if not body.get("stream"):
            return json_response(answer)
        events = chunks(answer, include_usage=True)
        for event in events:
            if self.bill.service_tier is not None:
                event["service_tier"] = self.bill.service_tier
        return sse_response([sse(e) for e in events] + [b"data: [DONE]\n\n"])
