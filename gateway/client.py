"""Kept for one release: the remote clients now live in ``gateway.sdk.remote`` (import them
from ``gateway``)."""

from gateway.facts import GatewayFacts
from gateway.sdk.protocol import GatewayConnectionError, GatewayTimeoutError, RetryPolicy
from gateway.sdk.remote import (
    AsyncGatewayClient,
    AsyncRemoteChunkStream,
    GatewayClient,
    RemoteChunkIterator,
)

__all__ = [
    "AsyncGatewayClient",
    "AsyncRemoteChunkStream",
    "GatewayClient",
    "GatewayConnectionError",
    "GatewayFacts",
    "GatewayTimeoutError",
    "RemoteChunkIterator",
    "RetryPolicy",
]
