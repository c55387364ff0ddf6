"""llm-gateway: one OpenAI-compatible API over OpenAI, Azure OpenAI, Mistral and more.

The public names load on first use (PEP 562): ``from gateway import GatewayClient`` imports
the remote client and what it needs, never the engine, the ledger's database or the upstream
HTTP client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.call import Call, CallInfo
    from gateway.config import GatewayConfig, load_config, load_config_file
    from gateway.engine import Engine
    from gateway.errors import (
        AuthenticationError,
        BudgetExceededError,
        ConfigError,
        ContentFilterError,
        ContextLengthExceededError,
        GatewayError,
        InvalidRequestError,
        NotFoundError,
        PayloadTooLargeError,
        PermissionDeniedError,
        RateLimitError,
        RequestTimeoutError,
        StreamInterruptedError,
        UpstreamConnectionError,
        UpstreamError,
        UpstreamTimeoutError,
    )
    from gateway.facts import GatewayFacts
    from gateway.sdk.local import AsyncGateway, Gateway
    from gateway.sdk.remote import AsyncGatewayClient, GatewayClient
    from gateway.transport import AiohttpTransport, HttpxTransport
    from gateway.wire import Transport

__all__ = [
    "AiohttpTransport",
    "AsyncGateway",
    "AsyncGatewayClient",
    "AuthenticationError",
    "BudgetExceededError",
    "Call",
    "CallInfo",
    "ConfigError",
    "ContentFilterError",
    "ContextLengthExceededError",
    "Engine",
    "Gateway",
    "GatewayClient",
    "GatewayConfig",
    "GatewayError",
    "GatewayFacts",
    "HttpxTransport",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "StreamInterruptedError",
    "Transport",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "load_config",
    "load_config_file",
]
_MODULES = {
    "gateway.call": ("Call", "CallInfo"),
    "gateway.config": ("GatewayConfig", "load_config", "load_config_file"),
    "gateway.engine": ("Engine",),
    "gateway.errors": tuple(n for n in __all__ if n.endswith("Error")),
    "gateway.facts": ("GatewayFacts",),
    "gateway.sdk.local": ("AsyncGateway", "Gateway"),
    "gateway.sdk.remote": ("AsyncGatewayClient", "GatewayClient"),
    "gateway.transport": ("AiohttpTransport", "HttpxTransport"),
    "gateway.wire": ("Transport",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

if not TYPE_CHECKING:  # type checkers see the imports above; a misspelt name stays an error

    def __getattr__(name: str) -> Any:
        module = _WHERE.get(name)
        if module is None:
            raise AttributeError(f"module 'gateway' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # found once, then a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
