"""Prometheus metrics: what the gateway served, failed, spent and waited for.

One Engine observer turns each finished call into a handful of counter increments and
histogram observations. Label children are resolved once per label combination and kept in
a dict, so a request costs one dictionary lookup plus the updates themselves (see
docs/operations.md for the measured cost).

Several uvicorn workers (``server.workers > 1``) each count in their own process; with
``PROMETHEUS_MULTIPROC_DIR`` set (``llm-gateway serve`` sets it to a per-run directory) every
worker writes its values there and ``/metrics`` adds them up, whichever worker answers the
scrape. State held by a worker — circuit breakers, the ledger writer's backlog — is read into
gauges when ``/metrics`` is scraped and, with several workers, every few seconds by each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from gateway.call import Call
from gateway.engine import Engine
from gateway.errors import GatewayError, RateLimitError
from gateway.limits import GuardedLimits
from gateway.observability.multiprocess import MULTIPROC_ENV
from gateway.wire import JSON

REFRESH_SECONDS = 5.0  # how often each worker publishes its gauges when there are several
# Circuit state as a number, so the worst state across workers is their maximum.
CIRCUIT_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
OTHER_MODEL = "other"  # a model name the config does not serve (bounds the label's values)


def multiprocess_mode() -> bool:
    """Whether values live in ``PROMETHEUS_MULTIPROC_DIR`` (shared by several workers)."""
    return bool(os.environ.get(MULTIPROC_ENV))


@dataclass(slots=True)
class _CallSeries:
    """The label children one kind of call updates, resolved once."""

    requests: Counter
    latency: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    spend: Counter
    unpriced: Counter
    overhead: Histogram
    fallbacks: Counter


class GatewayMetrics:
    """The metrics of one gateway process, fed by ``observe`` (an Engine observer)."""

    def __init__(
        self, engine: Engine, registry: CollectorRegistry | None, *, per_key: bool = True
    ) -> None:
        self.engine = engine
        self.per_key = per_key
        r = registry
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by public model, provider, operation and HTTP status.",
            ["model", "provider", "operation", "status"],
            registry=r,
        )
        self.errors = Counter(
            "gateway_errors",
            "Failed requests by error type (the OpenAI-style error code).",
            ["model", "provider", "type"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Whole request duration (for streams: until the last chunk).",
            ["model", "provider", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Streaming requests: time from arrival to the first output chunk.",
            ["model", "provider"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway itself, upstream waiting excluded (x-gateway-overhead-ms;"
            " for streams, until the first token).",
            ["operation"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "gateway_upstream_attempts",
            "Upstream attempts by deployment and outcome (success, or the error code).",
            ["provider", "deployment", "outcome"],
            registry=r,
        )
        self.attempt_latency = Histogram(
            "gateway_upstream_attempt_duration_seconds",
            "One upstream attempt (streams: until the first output).",
            ["provider", "deployment"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Requests answered by a fallback model rather than the one asked for.",
            ["model", "provider"],
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens billed (reported, or estimated when the provider sent no usage).",
            ["model", "provider", "key", "team", "kind"],
            registry=r,
        )
        self.spend = Counter(
            "gateway_spend_usd",
            "Spend in USD at catalog (or configured) prices.",
            ["model", "provider", "key", "team"],
            registry=r,
        )
        self.unpriced = Counter(
            "gateway_unpriced_requests",
            "Answered requests whose cost is unknown (no price for the model).",
            ["model", "provider"],
            registry=r,
        )
        self.rejections = Counter(
            "gateway_limit_rejections",
            "Requests refused by the gateway's own limits (rate limit or budget).",
            ["reason", "key", "team"],
            registry=r,
        )
        self.circuit = Gauge(
            "gateway_circuit_state",
            "Circuit breaker per deployment: 0 closed, 1 half-open (probe due), 2 open; "
            "with several workers, the worst any live worker sees.",
            ["provider", "deployment"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.ledger_backlog = Gauge(
            "gateway_ledger_backlog_records",
            "Spend records held and not yet written to the ledger database.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.ledger_written = Counter(
            "gateway_ledger_written_records", "Spend records written to the ledger.", registry=r
        )
        self.ledger_dropped = Counter(
            "gateway_ledger_dropped_records",
            "Spend records lost (buffers full, database down at shutdown).",
            registry=r,
        )
        self.ledger_set_aside = Counter(
            "gateway_ledger_refused_records",
            "Spend records the database refused for their content: stored without their tags "
            "(outcome=salvaged) or not stored (outcome=rejected).",
            ["outcome"],
            registry=r,
        )
        self.limits_backend_errors = Counter(
            "gateway_limits_backend_unavailable",
            "Calls admitted uncounted (action=admitted) or refused with 503 (action=refused) "
            "because the limits backend (Redis) could not be reached.",
            ["action"],
            registry=r,
        )
        self.limits_settle_failures = Counter(
            "gateway_limits_settle_failures",
            "Failed tries to settle or release a reservation in the limits backend.",
            registry=r,
        )
        self.limits_settlements_lost = Counter(
            "gateway_limits_settlements_lost",
            "Settlements that never reached the limits backend (queue full, shutdown).",
            registry=r,
        )
        self.limits_pending = Gauge(
            "gateway_limits_pending_settlements",
            "Settlements and releases queued until the limits backend is back.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.cache_lookups = Counter(
            "gateway_cache_requests",
            "Requests by what the response cache did: hit, miss or bypass.",
            ["model", "outcome"],
            registry=r,
        )
        self.cache_stored_bytes = Counter(
            "gateway_cache_stored_bytes",
            "Bytes of answers written to the response cache.",
            ["model"],
            registry=r,
        )
        self.cache_saved = Counter(
            "gateway_cache_saved_usd",
            "What the answers served from the response cache cost when they were produced.",
            ["model"],
            registry=r,
        )
        self.deployment_prompt_tokens = Counter(
            "gateway_deployment_prompt_tokens",
            "Prompt tokens per deployment, all (kind=prompt) and served from the provider's "
            "prompt cache (kind=cached): their ratio is the deployment's cached-token ratio.",
            ["deployment", "kind"],
            registry=r,
        )
        self._prompt_series: dict[str, tuple[Counter, Counter]] = {}  # by deployment
        self._seen: dict[str, int] = {}  # state counts already added to their counters
        self._calls: dict[tuple[str, str, str, int, str, str], _CallSeries] = {}
        self._attempt_latency: dict[str, Histogram] = {}  # by deployment
        self._outcomes: dict[tuple[str, str], Counter] = {}  # by deployment and outcome
        self._errors: dict[tuple[str, str, str], Counter] = {}
        self._ledger_seen = (0, 0)  # written, dropped: already counted

    # -- the hot path ------------------------------------------------------------------
    def observe(self, info: Call, error: GatewayError | None) -> None:
        """Count one finished call."""
        model = info.model
        if model is None:
            model = ""
        elif model not in self.engine.router.configs:
            model = OTHER_MODEL
        provider = info.provider or ""
        status = 200 if error is None else error.status
        api_key, team = (info.key_id or "", info.team or "") if self.per_key else ("", "")
        key = (model, provider, info.operation, status, api_key, team)
        series = self._calls.get(key)
        if series is None:
            series = self._calls[key] = self._call_series(key)
        series.requests.inc()
        series.latency.observe(info.elapsed_seconds())
        ttft = info.ttft_seconds
        if ttft is not None:
            series.ttft.observe(ttft)
            series.overhead.observe(max(0.0, ttft - info.upstream_seconds))
        else:
            series.overhead.observe(info.overhead_ms() / 1000.0)
        if info.fallback_used:
            series.fallbacks.inc()
        usage = info.usage
        if usage:
            prompt = usage.get("prompt_tokens")
            if isinstance(prompt, int) and prompt:
                series.prompt_tokens.inc(prompt)
            completion = usage.get("completion_tokens")
            if isinstance(completion, int) and completion:
                series.completion_tokens.inc(completion)
            if isinstance(prompt, int) and prompt and info.deployment:
                self._count_prompt(info.deployment, prompt, usage)
        if info.cache is not None:
            self._count_cache(model, info)
        cost = info.cost
        if cost is not None:
            if cost.total is None:
                series.unpriced.inc()
            elif cost.total:
                series.spend.inc(float(cost.total))
        for record in info.attempt_log:
            dep = record.deployment
            latency = self._attempt_latency.get(dep)
            if latency is None:
                latency = self._attempt_latency[dep] = self.attempt_latency.labels(
                    self._provider_of(dep), dep
                )
            latency.observe(record.seconds)
            outcome_key = (dep, record.error or "success")
            outcome = self._outcomes.get(outcome_key)
            if outcome is None:
                outcome = self._outcomes[outcome_key] = self.attempts.labels(
                    self._provider_of(dep), *outcome_key
                )
            outcome.inc()
        if error is not None:
            self._count_error(model, provider, api_key, team, error)

    def _count_prompt(self, deployment: str, prompt: int, usage: JSON) -> None:
        """A deployment's prompt tokens and those its provider's prompt cache served."""
        pair = self._prompt_series.get(deployment)
        if pair is None:
            pair = self._prompt_series[deployment] = (
                self.deployment_prompt_tokens.labels(deployment, "prompt"),
                self.deployment_prompt_tokens.labels(deployment, "cached"),
            )
        pair[0].inc(prompt)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if isinstance(cached, int) and cached > 0:
            pair[1].inc(cached)

    def _count_cache(self, model: str, info: Call) -> None:
        ticket = info.cache
        assert ticket is not None
        self.cache_lookups.labels(model, ticket.status).inc()
        if ticket.stored_bytes:
            self.cache_stored_bytes.labels(model).inc(ticket.stored_bytes)
        if info.saved_usd:
            self.cache_saved.labels(model).inc(float(info.saved_usd))

    def _count_error(
        self, model: str, provider: str, api_key: str, team: str, error: GatewayError
    ) -> None:
        kind = error.code or error.type
        key = (model, provider, kind)
        child = self._errors.get(key)
        if child is None:
            child = self._errors[key] = self.errors.labels(*key)
        child.inc()
        if error.code == "budget_exceeded":
            self.rejections.labels("budget", api_key, team).inc()
        elif isinstance(error, RateLimitError) and error.provider is None:
            self.rejections.labels("rate_limit", api_key, team).inc()

    def _call_series(self, key: tuple[str, str, str, int, str, str]) -> _CallSeries:
        model, provider, operation, status, api_key, team = key
        return _CallSeries(
            requests=self.requests.labels(model, provider, operation, str(status)),
            latency=self.latency.labels(model, provider, operation),
            ttft=self.ttft.labels(model, provider),
            prompt_tokens=self.tokens.labels(model, provider, api_key, team, "prompt"),
            completion_tokens=self.tokens.labels(model, provider, api_key, team, "completion"),
            spend=self.spend.labels(model, provider, api_key, team),
            unpriced=self.unpriced.labels(model, provider),
            overhead=self.overhead.labels(operation),
            fallbacks=self.fallbacks.labels(model, provider),
        )

    def _provider_of(self, deployment_id: str) -> str:
        for deps in self.engine.router.deployments.values():
            for dep in deps:
                if dep.id == deployment_id:
                    return dep.provider_name
        return ""

    # -- state read at scrape time -----------------------------------------------------
    def refresh(self) -> None:
        """Publish this process's circuit states and ledger writer counts."""
        health = self.engine.health
        now = health.clock()
        seen: set[str] = set()
        for deps in self.engine.router.deployments.values():
            for dep in deps:
                if dep.id in seen:
                    continue
                seen.add(dep.id)
                h = health.get(dep.id)
                state = h.state
                if state == "open" and now >= h.open_until:
                    state = "half_open"  # cooled down: the next request probes it
                if health.shared is not None and state == "closed":
                    state = health.shared.state(dep.id)[0]
                self.circuit.labels(dep.provider_name, dep.id).set(CIRCUIT_VALUES[state])
        ledger = self.engine.ledger
        if ledger is not None:
            writer = ledger.writer
            self.ledger_backlog.set(writer.backlog)
            written, dropped = self._ledger_seen
            if writer.written > written:
                self.ledger_written.inc(writer.written - written)
            if writer.dropped > dropped:
                self.ledger_dropped.inc(writer.dropped - dropped)
            self._ledger_seen = (writer.written, writer.dropped)
            self._add("ledger_salvaged", writer.salvaged, self.ledger_set_aside.labels("salvaged"))
            self._add("ledger_rejected", writer.rejected, self.ledger_set_aside.labels("rejected"))
        limits = self.engine.limits
        if isinstance(limits, GuardedLimits):
            stats = limits.stats
            self.limits_pending.set(limits.pending)
            self._add(
                "admitted", stats.admitted_open, self.limits_backend_errors.labels("admitted")
            )
            self._add("refused", stats.refused, self.limits_backend_errors.labels("refused"))
            self._add("settle_failures", stats.settle_failures, self.limits_settle_failures)
            self._add("settle_lost", stats.lost, self.limits_settlements_lost)

    def _add(self, name: str, total: int, counter: Counter) -> None:
        """Bring ``counter`` up to ``total``, a count kept by the engine's state."""
        seen = self._seen.get(name, 0)
        if total > seen:
            counter.inc(total - seen)
            self._seen[name] = total


class MetricsEndpoint:
    """``GET /metrics``: this process's registry, or every worker's values added up."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Engine) -> None:
        # No ``*_created`` series: they double the output and dashboards do not read them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess = multiprocess_mode()
        self.registry: CollectorRegistry | None = None
        if not self.multiprocess:
            # A registry per gateway (not the global one): tests and embedders may run
            # several gateways in one process.
            self.registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.metrics = GatewayMetrics(engine, self.registry, per_key=engine.config.metrics.per_key)
        self._refresher: asyncio.Task[None] | None = None

    def render(self) -> bytes:
        """The exposition text (call ``metrics.refresh`` first, on the event loop)."""
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    async def start(self) -> None:
        if self.multiprocess and self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def aclose(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self.multiprocess:
            # This worker's gauges stop counting (its counters stay: they happened).
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    async def _refresh_forever(self) -> None:
        while True:
            self.metrics.refresh()
            await asyncio.sleep(REFRESH_SECONDS)
