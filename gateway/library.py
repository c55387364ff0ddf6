"""Kept for one release: the in-process library now lives in ``gateway.sdk.local`` (import
``Gateway`` and ``AsyncGateway`` from ``gateway``)."""

from gateway.sdk.local import AsyncChunkStream, AsyncGateway, ChunkIterator, Gateway

__all__ = ["AsyncChunkStream", "AsyncGateway", "ChunkIterator", "Gateway"]
