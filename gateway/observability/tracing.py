"""OpenTelemetry traces: one span per request, one child span per upstream attempt, with the
GenAI semantic-convention attributes (``gen_ai.*``) and the gateway's own (``gateway.*``).

Spans are built when the call ends, from its ``Call`` (times included), so tracing adds
nothing to a request until then, and nothing at all when it is off: this module (and
OpenTelemetry) is imported only when ``tracing.enabled`` is true. Needs the ``otel`` extra.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.governance.residency import allowed, narrow

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from gateway.call import Call
    from gateway.config import TracingConfig
    from gateway.engine import Engine
    from gateway.errors import GatewayError

# gen_ai.operation.name values, by the ledger's operation.
GENAI_OPERATION = {
    "chat": "chat",
    "embeddings": "embeddings",
    "fim": "text_completion",
    "completions": "text_completion",
    "responses": "chat",
}
# The W3C trace headers of the request being served (set by TraceContextMiddleware).
_CALLER_TRACE: ContextVar[dict[str, str] | None] = ContextVar("caller_trace", default=None)
_TRACE_HEADERS = (b"traceparent", b"tracestate")


class TraceContextMiddleware:
    """Keeps a request's ``traceparent``/``tracestate`` so its span joins the caller's trace
    (added only when tracing is on)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            carrier = {
                name.decode(): value.decode("latin-1")
                for name, value in scope["headers"]
                if name in _TRACE_HEADERS
            }
            if carrier:
                token = _CALLER_TRACE.set(carrier)
                try:
                    await self.app(scope, receive, send)
                finally:
                    _CALLER_TRACE.reset(token)
                return
        await self.app(scope, receive, send)


class Tracing:
    """Engine observer that turns each finished call into spans and exports them."""

    def __init__(
        self, engine: Engine, config: TracingConfig, exporter: SpanExporter | None = None
    ) -> None:
        self.engine = engine
        self.region = config.region
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter or _exporter(config)))
        self.tracer = self.provider.get_tracer("llm-gateway")
        self._provider_types: dict[str, str] = {}  # deployment id → gen_ai.provider.name
        self._propagator = TraceContextTextMapPropagator()

    def observe(self, info: Call, error: GatewayError | None) -> None:
        principal = info.principal
        policy = info.regions
        if principal is not None and principal.regions is not None:
            policy = narrow(policy, principal.regions)
        if not allowed(self.region, policy):
            return  # residency: this call's facts stay out of an endpoint in another region
        end = time.time_ns()
        start = end - int(info.elapsed_seconds() * 1e9)
        operation = GENAI_OPERATION.get(info.operation, info.operation)
        served = info.served_by
        genai_provider = (
            self._genai_provider(info.deployment) if info.deployment is not None else None
        )
        usage = info.usage or {}
        cost = info.cost
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": info.model,
            "gen_ai.response.model": info.upstream_model,
            "gen_ai.provider.name": genai_provider,
            "gen_ai.system": genai_provider,  # the name older conventions read
            "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
            "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
            "http.response.status_code": 200 if error is None else error.status,
            "error.type": None if error is None else (error.code or error.type),
            "gateway.request_id": info.request_id,
            "gateway.client_request_id": info.client_request_id,
            "gateway.key_id": info.key_id,
            "gateway.team": info.team,
            "gateway.provider": info.provider,
            "gateway.deployment": info.deployment,
            "gateway.region": None if served is None else served.region,
            "gateway.attempts": info.attempts,
            "gateway.fallback_used": info.fallback_used,
            "gateway.stream": info.stream,
            "gateway.surface": info.surface,
            "gateway.ttft_ms": None if info.ttft_seconds is None else info.ttft_seconds * 1000,
            "gateway.cost_usd": None if cost is None or cost.total is None else float(cost.total),
            "gateway.usage_estimated": cost is not None and cost.estimated,
        }
        carrier = _CALLER_TRACE.get()
        span = self.tracer.start_span(
            f"{operation} {info.model}" if info.model else operation,
            context=self._propagator.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            start_time=start,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        parent = trace.set_span_in_context(span)
        for record in info.attempt_log:
            began = int(record.started * 1e9)
            provider = self._genai_provider(record.deployment)
            child_attributes: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": record.model,
                "gen_ai.provider.name": provider,
                "gen_ai.system": provider,
                "gateway.deployment": record.deployment,
                "http.response.status_code": record.status,
                "error.type": record.error,
            }
            child = self.tracer.start_span(
                f"{operation} {record.model}",
                context=parent,
                kind=SpanKind.CLIENT,
                start_time=began,
                attributes={k: v for k, v in child_attributes.items() if v is not None},
            )
            if record.error is not None:
                child.set_status(Status(StatusCode.ERROR, record.error))
            child.end(end_time=began + int(record.seconds * 1e9))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error.code or error.type))
        span.end(end_time=end)

    def _genai_provider(self, deployment_id: str) -> str | None:
        known = self._provider_types.get(deployment_id)
        if known is not None:
            return known
        for deps in self.engine.router.deployments.values():
            for dep in deps:
                if dep.id == deployment_id:
                    known = self._provider_types[deployment_id] = dep.provider.genai_name()
                    return known
        return None

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocks: run it off the event loop)."""
        self.provider.shutdown()


def _exporter(config: TracingConfig) -> SpanExporter:
    if config.exporter == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    headers = {k: v.get_secret_value() for k, v in config.headers.items()}
    return OTLPSpanExporter(endpoint=config.endpoint, headers=headers or None)
