"""llm-gateway: one OpenAI-compatible API over OpenAI, Azure OpenAI, Mistral and more."""

from gateway.client import AsyncGatewayClient, GatewayClient
from gateway.config import GatewayConfig, load_config, load_config_file
from gateway.engine import CallInfo, Engine
from gateway.errors import (
    AuthenticationError,
    ConfigError,
    ContentFilterError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.facts import GatewayFacts
from gateway.library import AsyncGateway, Gateway
from gateway.transport import AiohttpTransport, HttpxTransport, Transport

__all__ = [
    "AiohttpTransport",
    "AsyncGateway",
    "AsyncGatewayClient",
    "AuthenticationError",
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
    "StreamInterruptedError",
    "Transport",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "load_config",
    "load_config_file",
]
