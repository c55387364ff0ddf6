"""CPU time each observer of finished calls adds to a request: ``python -m benchmarks.observers``.

Feeds N realistic ``Call``s (usage, cost, one attempt, a key and a team, a few label
combinations) to the metrics observer (single-process, then in a child process with
``PROMETHEUS_MULTIPROC_DIR`` set), the access log (JSON to /dev/null, and switched off by
level), and the tracing observer (spans built and handed to a batch processor whose exporter
drops them). Prints microseconds per call.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from decimal import Decimal

from gateway.call import Call
from gateway.config import load_config
from gateway.costs import Cost
from gateway.engine import Engine
from gateway.errors import GatewayError
from gateway.resilience import AttemptRecord

CONFIG = {
    "ledger": {"enabled": False},
    "providers": {"mock": {"type": "mock"}},
    "models": {
        name: {"deployments": [{"provider": "mock", "model": name}]}
        for name in ("mock-echo", "mock-chat")
    },
}
Observer = Callable[[Call, GatewayError | None], None]


def calls(n: int) -> list[Call]:
    out = []
    for i in range(n):
        model = ("mock-echo", "mock-chat")[i % 2]
        info = Call(request_id=f"{i:032x}", started=time.perf_counter() - 0.25)
        info.model = info.upstream_model = model
        info.tries.provider, info.tries.deployment = "mock", f"mock/{model}"
        info.tries.upstream_seconds = 0.249
        info.key_id, info.team = f"key-{i % 4}", "team-a"
        info.usage = {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}
        info.cost = Cost(total=Decimal("0.0007"))
        info.attempt_log.append(AttemptRecord(f"mock/{model}", model, time.time() - 0.25, 0.249))
        info.attempt_log[0].status = 200
        out.append(info)
    return out


def per_call_us(
    observer: Observer,
    infos: Sequence[Call],
    repeat: int = 3,
    clock: Callable[[], float] = time.process_time,
    settle: Callable[[], None] = lambda: None,
) -> float:
    """Best of ``repeat`` runs; ``clock`` is the process's CPU time (every thread) by default,
    ``settle`` waits for work the observer left to other threads."""
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        for info in infos:
            observer(info, None)
        settle()
        best = min(best, clock() - start)
    return best / len(infos) * 1e6


def metrics_observer(engine: Engine) -> Observer:
    from gateway.observability.metrics import MetricsEndpoint

    return MetricsEndpoint(engine).metrics.observe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100_000, help="calls per measurement")
    parser.add_argument("--only-metrics", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    engine = Engine(load_config(CONFIG))
    infos = calls(args.n)
    if args.only_metrics:  # the child with PROMETHEUS_MULTIPROC_DIR set
        print(f"{per_call_us(metrics_observer(engine), infos):.2f}")
        return

    rows: list[tuple[str, float]] = []
    rows.append(("metrics, one process", per_call_us(metrics_observer(engine), infos)))
    with tempfile.TemporaryDirectory() as directory:
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.observers", "-n", str(args.n), "--only-metrics"],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory},
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(("metrics, multiprocess files", float(child.stdout.strip())))

    from gateway.observability.logs import (
        ACCESS_LOGGER,
        AccessLog,
        BackgroundHandler,
        JsonFormatter,
    )

    logger = logging.getLogger(ACCESS_LOGGER)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    with open(os.devnull, "w") as sink:
        handler = BackgroundHandler(sink, capacity=10 * 3 * len(infos))
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        access = AccessLog().observe
        rows.append(
            (
                "access log, JSON line: on the request's thread",
                per_call_us(access, infos, clock=time.thread_time),
            )
        )
        rows.append(
            (
                "access log, JSON line: all threads, written",
                per_call_us(access, infos, settle=handler.flush),
            )
        )
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.WARNING)
    rows.append(("access log, level above INFO", per_call_us(AccessLog().observe, infos)))

    try:
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

        from gateway.config import TracingConfig
        from gateway.observability.tracing import Tracing
    except ImportError:
        print("(tracing skipped: the otel extra is not installed)")
    else:

        class Drop(SpanExporter):
            def export(self, spans: object) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        tracing = Tracing(engine, TracingConfig(enabled=True), exporter=Drop())
        rows.append(("traces, 2 spans per call", per_call_us(tracing.observe, infos)))
        tracing.shutdown()

    print(f"| observer ({args.n:,} calls) | CPU us per call |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    main()
