"""OpenTelemetry traces: a span per request and a child span per upstream attempt, carrying
the GenAI semantic-convention attributes; exported over OTLP/HTTP to a collector on
127.0.0.1; and nothing at all (not even an import) when tracing is off."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.observability.tracing import Tracing
from gateway.server import create_app
from tests.emulators.common import Fault
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, chat, gateway_config

COLLECTOR_KEY = "collector-secret-for-tests"


class Collector:
    """An OTLP/HTTP trace receiver: keeps each export request and its headers."""

    def __init__(self) -> None:
        self.exports: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []
        self.app = Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"])])

    async def traces(self, request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        self.exports.append((dict(request.headers), message))
        return Response(
            ExportTraceServiceResponse().SerializeToString(),
            media_type="application/x-protobuf",
        )


@dataclass
class Traced:
    url: str
    tracing: Tracing
    spans: InMemorySpanExporter
    collector: Collector

    def finished(self, request_id: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
        """The request's span and its children, in start order."""
        spans = self.spans.get_finished_spans()
        roots = [s for s in spans if (s.attributes or {}).get("gateway.request_id") == request_id]
        assert len(roots) == 1, spans
        root = roots[0]
        assert root.context is not None
        children = [s for s in spans if s.parent is not None and s.parent == root.context]
        return root, sorted(children, key=lambda s: s.start_time or 0)


@pytest.fixture(scope="module")
def traced(
    openai_upstream: OpenAIEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traced]:
    collector = Collector()
    with ServerThread(collector.app) as receiver:
        config = gateway_config(
            openai_upstream.url,
            tmp_path_factory.mktemp("tracing") / "ledger.db",
            tracing={
                "enabled": True,
                "endpoint": receiver.url + "/v1/traces",
                "headers": {"x-collector-key": COLLECTOR_KEY},
                "service_name": "gateway-under-test",
            },
        )
        config["models"]["gpt-4o"]["fallbacks"] = ["gpt-4o-mini"]
        app = create_app(config)
        tracing = app.state.observability.tracing
        spans = InMemorySpanExporter()
        tracing.provider.add_span_processor(SimpleSpanProcessor(spans))
        with ServerThread(app) as server:
            yield Traced(server.url + "/v1", tracing, spans, collector)


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_request_is_a_server_span_with_genai_attributes(
    traced: Traced, openai_emu: OpenAIEmulator
) -> None:
    answer = chat(traced.url, MASTER_KEY)
    assert answer.status_code == 200
    root, children = traced.finished(answer.headers["x-request-id"])
    body = answer.json()
    assert root.name == "chat gpt-4o" and root.kind == SpanKind.SERVER
    attrs = attributes(root)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "gpt-4o"
    assert attrs["gen_ai.response.model"] == body["model"]
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.usage.input_tokens"] == body["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"]
    assert attrs["gateway.deployment"] == "openai/gpt-4o"
    assert attrs["gateway.attempts"] == 1
    assert attrs["gateway.cost_usd"] == pytest.approx(float(answer.headers["x-gateway-cost"]))
    assert attrs["http.response.status_code"] == 200
    assert root.status.status_code == StatusCode.UNSET

    (attempt,) = children
    assert attempt.kind == SpanKind.CLIENT and attempt.name == "chat gpt-4o"
    assert attributes(attempt)["gen_ai.request.model"] == "gpt-4o"
    assert attributes(attempt)["http.response.status_code"] == 200
    assert root.start_time is not None and root.end_time is not None
    assert attempt.start_time is not None and attempt.end_time is not None
    # the attempt lies within the request (a millisecond of slack: the two clocks are read apart)
    assert root.start_time - 1_000_000 <= attempt.start_time <= attempt.end_time
    assert attempt.end_time <= root.end_time + 1_000_000


def test_a_request_joins_the_callers_trace(traced: Traced, openai_emu: OpenAIEmulator) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    answer = chat(traced.url, MASTER_KEY, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert answer.status_code == 200
    root, (attempt,) = traced.finished(answer.headers["x-request-id"])
    assert root.context is not None and root.parent is not None
    assert f"{root.context.trace_id:032x}" == trace_id
    assert f"{root.parent.span_id:016x}" == parent_id
    assert attempt.context is not None and attempt.context.trace_id == root.context.trace_id


def test_a_failed_attempt_and_its_fallback_are_child_spans(
    traced: Traced, openai_emu: OpenAIEmulator
) -> None:
    openai_emu.fail_next(Fault(status=500, body=b'{"error": {"message": "down"}}'))
    answer = chat(traced.url, MASTER_KEY)
    assert answer.status_code == 200
    root, (failed, fallback) = traced.finished(answer.headers["x-request-id"])
    assert attributes(root)["gateway.fallback_used"] is True
    assert attributes(root)["gateway.attempts"] == 2
    assert attributes(failed)["gateway.deployment"] == "openai/gpt-4o"
    assert attributes(failed)["http.response.status_code"] == 500
    assert failed.status.status_code == StatusCode.ERROR and "error.type" in attributes(failed)
    assert attributes(fallback)["gen_ai.request.model"] == "gpt-4o-mini"
    assert fallback.status.status_code == StatusCode.UNSET


def test_a_failed_request_is_an_error_span(traced: Traced, openai_emu: OpenAIEmulator) -> None:
    answer = chat(traced.url, MASTER_KEY, model="gpt-4o-mini")
    openai_emu.fail_next(Fault(status=400, body=b'{"error": {"message": "bad", "code": "x"}}'))
    refused = chat(traced.url, MASTER_KEY, model="gpt-4o-mini")
    assert (answer.status_code, refused.status_code) == (200, 400)
    root, _ = traced.finished(refused.headers["x-request-id"])
    assert root.status.status_code == StatusCode.ERROR
    assert attributes(root)["http.response.status_code"] == 400
    assert attributes(root)["error.type"]


def test_spans_reach_an_otlp_collector_with_its_headers(
    traced: Traced, openai_emu: OpenAIEmulator
) -> None:
    answer = chat(traced.url, MASTER_KEY)
    assert answer.status_code == 200
    assert traced.tracing.provider.force_flush(10_000)
    request_id = answer.headers["x-request-id"]
    found = []
    for headers, export in traced.collector.exports:
        assert headers["x-collector-key"] == COLLECTOR_KEY
        for resource_spans in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}[
                "service.name"
            ]
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    attrs = {a.key: a.value for a in span.attributes}
                    if "gateway.request_id" not in attrs:
                        continue  # an attempt's span
                    if attrs["gateway.request_id"].string_value == request_id:
                        found.append((service, span.name, attrs))
    assert len(found) == 1
    service, name, attrs = found[0]
    assert (service, name) == ("gateway-under-test", "chat gpt-4o")
    assert attrs["gen_ai.request.model"].string_value == "gpt-4o"
    assert attrs["gen_ai.usage.input_tokens"].int_value > 0


def test_tracing_off_adds_no_observer_and_imports_no_tracing_code(tmp_path: Path) -> None:
    # (redis-py imports OpenTelemetry's metrics API by itself when it is installed.)
    script = (
        "import sys\n"
        "from gateway.server import create_app\n"
        "app = create_app({'ledger': {'enabled': False}})\n"
        "print(len(app.state.engine.observers), "
        "any(m in sys.modules for m in ('gateway.observability.tracing', "
        "'opentelemetry.sdk.trace')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["2", "False"]  # metrics and the access log; no tracing
