"""One attempt's I/O: send an adapter's request through the transport, and read the answer.

An error status becomes the adapter's ``GatewayError`` (``Provider.error``), attributed to its
provider and deployment, so the attempt loop can decide on retries and fail-over. Time spent
waiting here is the upstream's, not the gateway's overhead (``Attempts.upstream_seconds``).
"""

from __future__ import annotations

import time

from gateway.errors import GatewayError
from gateway.resilience.attempts import Attempts
from gateway.wire import Timeouts, Transport, UpstreamRequest, UpstreamResponse
from providers.base import Deployment


async def open_response(
    transport: Transport,
    dep: Deployment,
    request: UpstreamRequest,
    timeouts: Timeouts,
    tries: Attempts,
) -> UpstreamResponse:
    """Send; return the response if its status is a success, else raise its error. Providers
    that answer in-process bring their own transport."""
    provider = dep.provider
    start = time.perf_counter()
    try:
        response = await (provider.transport or transport).send(request, timeouts)
        if response.status >= 400:
            raw = await response.read()
            raise provider.error(response.status, response.headers, raw, dep)
        return response
    except GatewayError as exc:
        exc.attribute(provider.name, dep.id)
        raise
    finally:
        tries.upstream_seconds += time.perf_counter() - start


async def read_answer(
    transport: Transport,
    dep: Deployment,
    request: UpstreamRequest,
    timeouts: Timeouts,
    tries: Attempts,
) -> bytes:
    """Send and read the whole successful body."""
    response = await open_response(transport, dep, request, timeouts, tries)
    start = time.perf_counter()
    try:
        return await response.read()
    finally:
        tries.upstream_seconds += time.perf_counter() - start
