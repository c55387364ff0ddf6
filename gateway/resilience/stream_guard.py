"""Reading one upstream stream honestly: bytes → SSE events → canonical chunks.

The guard skips (and counts) an event that cannot be decoded, ends the stream early when the
request's deadline passes, and decides at the end whether the answer is complete: the
provider's end marker (``[DONE]``), or a finish reason on every choice, makes it complete;
anything else — a cut connection, an idle timeout — raises, so a partial answer is never
presented as a whole one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator

from gateway.errors import (
    GatewayError,
    MalformedEventError,
    RequestTimeoutError,
    StreamInterruptedError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)
from gateway.wire import JSON, SSEDecoder, SSEEvent, UpstreamResponse
from providers.base import Deployment, StreamTranslator


def has_output(chunk: JSON) -> bool:
    """Whether a chunk carries anything beyond the opening role delta."""
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
            return True
        if delta.get("reasoning_content") or delta.get("function_call"):
            return True
    return False


class UpstreamStream:
    """Canonical chunks of one upstream streaming answer, with integrity checks.

    Chunks come in batches, one per network read: a burst of events that arrived together
    goes on together (and reaches the caller in one write) instead of one event at a time.
    """

    def __init__(
        self,
        response: UpstreamResponse,
        translator: StreamTranslator,
        deployment: Deployment,
        deadline: float,
    ) -> None:
        self.response = response
        self.translator = translator
        self.deployment = deployment
        self.deadline = deadline
        self.malformed_events = 0
        self._open_choices: set[int] = set()
        self._finished_choices: set[int] = set()
        self._reads: AsyncGenerator[list[JSON], None] = self._read()
        self._held: list[JSON] = []  # read by until_output, not handed out yet

    def take_held(self) -> list[JSON]:
        """What ``until_output`` read and nobody has taken yet (taken once)."""
        held, self._held = self._held, []
        return held

    @property
    def reads(self) -> AsyncGenerator[list[JSON], None]:
        """The chunks not read yet, a list per upstream read (never an empty one); what
        ``until_output`` read comes first, from ``take_held``."""
        return self._reads

    async def until_output(self) -> None:
        """Read until a chunk carries output (or the stream ends), holding what was read for
        ``batches``: a stream that fails before its first output can still be retried."""
        async for batch in self._reads:
            self._held += batch
            if any(has_output(chunk) for chunk in batch):
                return

    @property
    def complete_without_marker(self) -> bool:
        return bool(self._open_choices) and self._open_choices <= self._finished_choices

    async def _read(self) -> AsyncGenerator[list[JSON], None]:
        dep = self.deployment
        decoder = SSEDecoder()
        batch: list[JSON] = []
        try:
            async for raw in self.response.iter_bytes():
                if time.monotonic() > self.deadline:
                    raise RequestTimeoutError(
                        "the request's total time ran out while the answer was streaming"
                    )
                for event in decoder.feed(raw):
                    batch += self._translate(event)
                if batch:
                    yield batch
                    batch = []
                if self.translator.finished:
                    return
            for event in decoder.close():
                batch += self._translate(event)
            if batch:
                yield batch
                batch = []
            if self.translator.finished or self.complete_without_marker:
                return
            raise StreamInterruptedError(
                f"provider '{dep.provider_name}' (deployment '{dep.id}') closed the stream "
                "before it was complete; the answer above is partial"
            )
        except UpstreamConnectionError as exc:
            # The connection was fine when the stream began: this is a cut, not an outage.
            raise StreamInterruptedError(
                f"provider '{dep.provider_name}' (deployment '{dep.id}') closed the stream "
                f"before it was complete ({exc.message}); the answer above is partial",
                provider=dep.provider_name,
                deployment=dep.id,
            ) from exc
        except GatewayError as exc:
            exc.attribute(dep.provider_name, dep.id)
            if batch:  # what the same read carried before the error (e.g. an error event)
                pending, batch = batch, []
                yield pending
            if isinstance(exc, UpstreamTimeoutError) and time.monotonic() >= self.deadline - 0.01:
                # The wait for the next byte is bounded by the request's deadline too.
                raise RequestTimeoutError(
                    "the request's total time ran out while the answer was streaming"
                ) from exc
            raise
        finally:
            await self.response.close()

    def _translate(self, event: SSEEvent) -> list[JSON]:
        try:
            chunks = self.translator.feed(event)
        except MalformedEventError:
            self.malformed_events += 1
            return []
        for chunk in chunks:
            for choice in chunk.get("choices") or ():
                index = choice.get("index", 0)
                self._open_choices.add(index)
                if choice.get("finish_reason"):
                    self._finished_choices.add(index)
        return chunks

    async def aclose(self) -> None:
        # If another task is inside the generator, closing the response ends it there.
        with contextlib.suppress(RuntimeError):
            await self._reads.aclose()
        await self.response.close()
