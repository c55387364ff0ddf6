"""Engine observers: told once per call as it ends, with its facts and error; one that fails
never fails the call nor keeps the others from being told."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import AsyncGateway, NotFoundError
from gateway.call import Call
from gateway.errors import GatewayError

CONFIG: dict[str, Any] = {
    "ledger": {"enabled": False},
    "providers": {"mock": {"type": "mock"}},
    "models": {"mock-echo": {"deployments": [{"provider": "mock", "model": "mock-echo"}]}},
}
HI = [{"role": "user", "content": "hi"}]


async def test_each_call_is_observed_once_with_its_error() -> None:
    seen: list[tuple[Call, GatewayError | None]] = []
    async with AsyncGateway(CONFIG) as gw:
        gw.engine.observers.append(lambda info, error: seen.append((info, error)))
        await gw.chat.completions.create(model="mock-echo", messages=HI)
        stream = await gw.chat.completions.create(model="mock-echo", messages=HI, stream=True)
        async for _ in stream:
            pass
        with pytest.raises(NotFoundError):
            await gw.chat.completions.create(model="no-such-model", messages=HI)
    assert [(info.model, info.stream, error) for info, error in seen[:2]] == [
        ("mock-echo", False, None),
        ("mock-echo", True, None),
    ]
    info, error = seen[2]
    assert isinstance(error, NotFoundError) and info.model == "no-such-model"
    assert len(seen) == 3


async def test_a_failing_observer_fails_nothing(caplog: pytest.LogCaptureFixture) -> None:
    told: list[str] = []

    def broken(info: Call, error: GatewayError | None) -> None:
        raise RuntimeError("observer bug")

    async with AsyncGateway(CONFIG) as gw:
        gw.engine.observers.extend([broken, lambda info, error: told.append(info.request_id)])
        reply = await gw.chat.completions.create(model="mock-echo", messages=HI)
    assert reply.choices[0].message.content
    assert len(told) == 1
    assert "observer" in caplog.text and "observer bug" in caplog.text
