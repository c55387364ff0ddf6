"""Batch jobs through the gateway: a job is routed like a call, reserved against budgets at
its worst case, created upstream in the provider's dialect, followed to its end, and settled
to the real cost of its result lines, each of which becomes a ledger record.

``Batches`` is what the routes, the library and the CLI call; ``BatchPoller`` follows the jobs
in the background (one replica at a time per job, by the job's lease in the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from gateway.auth import Principal
from gateway.batch.lines import (
    ENDPOINTS,
    batch_price,
    line_cost,
    line_record,
    line_saving,
    read_input,
    read_results,
    worst_case,
)
from gateway.batch.store import BatchStore, StoredFile, money
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError
from gateway.limits import Admission, ScopeLimits
from gateway.resilience import Attempts
from gateway.resilience.upstream import read_answer
from gateway.wire import JSON, UpstreamRequest
from providers.base import Deployment, UpstreamBatch

if TYPE_CHECKING:
    from gateway.engine import Engine

log = logging.getLogger("gateway.batch")

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# The OpenAI batch field that says when each status was reached.
STATUS_TIMES = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}
# How long a replica holds a job while it looks at it: long enough to download and record
# large result files; released at once when the look ends, so it matters only for a replica
# that died mid-look (its job waits this long for another).
LEASE_SECONDS = 600.0


def _id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def file_object(file: StoredFile) -> JSON:
    """A file in OpenAI's shape."""
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _unix(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
    }


def batch_object(row: Any) -> JSON:
    """A batch in OpenAI's shape."""
    times: dict[str, int] = row.times or {}
    created = _unix(row.created_at)
    out: JSON = {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "model": row.model,
        "errors": {"object": "list", "data": row.errors} if row.errors else None,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": created,
        "expires_at": created + 24 * 3600,
    }
    for status, field in STATUS_TIMES.items():
        out[field] = times.get(status)
    out["request_counts"] = {
        "total": row.request_total,
        "completed": row.request_completed,
        "failed": row.request_failed,
    }
    out["metadata"] = row.batch_metadata
    return out


def batch_headers(row: Any) -> dict[str, str]:
    """What the gateway knows of a batch's money: its reservation, then its cost."""
    headers = {
        "x-gateway-batch-reserved": f"{money(row.reserved_usd).normalize():f}",
        "x-gateway-provider": row.provider,
        "x-gateway-deployment": row.deployment,
    }
    if row.settled and row.cost_usd is not None:
        headers["x-gateway-cost"] = f"{row.cost_usd.normalize():f}"
        if row.live_cost_usd is not None:  # what the same lines cost as live calls
            headers["x-gateway-live-cost"] = f"{row.live_cost_usd.normalize():f}"
    return headers


class Batches:
    """Files and batch jobs for callers of one gateway (its engine's setup, limits, ledger)."""

    def __init__(self, engine: Engine) -> None:
        if engine.ledger is None:
            raise RuntimeError("batch jobs need the ledger's database (ledger.enabled)")
        self.engine = engine
        self.store = BatchStore(engine.ledger.engine)
        self._admissions: dict[str, Admission] = {}

    @property
    def config(self) -> Any:
        return self.engine.config.batches

    # -- files -------------------------------------------------------------------------
    async def upload(
        self, principal: Principal, filename: str, purpose: str, content: bytes
    ) -> JSON:
        if purpose != "batch":
            raise InvalidRequestError(
                f"purpose '{purpose}' is not served here; files are for batch jobs "
                "(purpose: batch)",
                param="purpose",
            )
        if len(content) > self.config.max_file_bytes:
            raise InvalidRequestError(
                f"the file has {len(content)} bytes, more than batches.max_file_bytes "
                f"({self.config.max_file_bytes})",
                param="file",
            )
        file = StoredFile(
            _id("file-"), principal.key_id, purpose, filename, len(content), datetime.now(UTC)
        )
        await self.store.add_file(file, content)
        return file_object(file)

    async def file(self, principal: Principal, file_id: str) -> StoredFile:
        file = await self.store.file(file_id)
        if file is None or not (principal.is_master or file.key_id == principal.key_id):
            raise NotFoundError(f"no file '{file_id}'", param="file_id")
        return file

    async def files(self, principal: Principal, limit: int = 100) -> list[JSON]:
        found = await self.store.files(principal.key_id, everyone=principal.is_master, limit=limit)
        return [file_object(f) for f in found]

    async def content(self, principal: Principal, file_id: str) -> bytes:
        await self.file(principal, file_id)
        return await self.store.content(file_id) or b""

    async def delete_file(self, principal: Principal, file_id: str) -> JSON:
        await self.file(principal, file_id)
        await self.store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- jobs --------------------------------------------------------------------------
    async def create(
        self,
        principal: Principal,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        regions: frozenset[str] | None = None,
    ) -> Any:
        """Check the input, route it, reserve its worst case, create the job upstream."""
        if endpoint not in ENDPOINTS:
            raise InvalidRequestError(
                f"endpoint '{endpoint}' cannot be batched here; supported: "
                f"{', '.join(sorted(ENDPOINTS))}",
                param="endpoint",
            )
        if completion_window != "24h":
            raise InvalidRequestError("completion_window must be '24h'", param="completion_window")
        stored = await self.file(principal, input_file_id)
        lines = read_input(await self.store.content(stored.id) or b"", endpoint)
        model = lines[0].request.model
        dep = self._route(principal, model, regions)
        setup = self.engine.setup
        price = batch_price(setup.accountant.price(dep), self.config.price_multiplier)
        limits = self.engine.config.limits
        budgets = tuple(
            replace(s, rpm=None, tpm=None, max_parallel=None)
            for s in principal.limits
            if s.budget_usd is not None
        )
        if price is None and budgets:
            raise setup.accountant.unpriced_refusal(model, [dep])
        reserve = (
            sum(
                (worst_case(line, price, dep, limits.default_max_output_tokens) for line in lines),
                Decimal(0),
            )
            if price is not None
            else Decimal(0)
        )
        batch_id = _id("batch_")
        admission = None
        if budgets:
            admission = await self.engine.limits.admit(batch_id, budgets, tokens=0, cost=reserve)
        try:
            upstream = await self._start(dep, lines, batch_id, metadata or {})
        except BaseException:
            if admission is not None:
                await self.engine.limits.release(admission)
            raise
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "id": batch_id,
            "key_id": principal.key_id,
            "team": principal.team,
            "model": model,
            "deployment": dep.id,
            "provider": dep.provider_name,
            "endpoint": endpoint,
            "completion_window": completion_window,
            "input_file_id": input_file_id,
            "upstream_id": upstream.id,
            "status": upstream.status,
            "created_at": now,
            "times": {upstream.status: _unix(now)},
            "request_total": len(lines),
            "request_completed": 0,
            "request_failed": 0,
            "batch_metadata": metadata,
            "errors": None,
            "reserved_usd": reserve,
            "budget": _budget_state(admission),
            "settled": False,
            "next_poll_at": now + timedelta(seconds=self.config.poll_interval),
            "poll_failures": 0,
        }
        await self.store.add_batch(values)
        if admission is not None:
            self._admissions[batch_id] = admission
        row = await self.store.batch(batch_id)
        assert row is not None
        return row

    def _route(
        self, principal: Principal, model: str, regions: frozenset[str] | None
    ) -> Deployment:
        router = self.engine.setup.router
        may_use, regions = principal.authorize(model, regions, router.deployments)
        plan = router.plan(model, [], frozenset(), regions, may_use)
        for dep in plan.attempts:
            if dep.can_batch:
                return dep
        able = [d.id for d in router.deployments.get(model, ()) if d.can_batch]
        if able:
            raise InvalidRequestError(
                f"model '{model}' runs batch jobs only on {', '.join(able)}, outside the regions "
                "this key's data may go to",
                param="input_file_id",
                code="batch_not_supported",
            )
        raise InvalidRequestError(
            f"model '{model}' cannot run batch jobs: none of its deployments "
            f"({', '.join(d.id for d in plan.attempts)}) supports the batch API; send its "
            "lines as live calls, or add a deployment that batches (OpenAI, Mistral on La "
            "Plateforme, an Azure Global Batch deployment with capabilities: {batch: true})",
            param="input_file_id",
            code="batch_not_supported",
        )

    async def _start(
        self, dep: Deployment, lines: list[Any], batch_id: str, metadata: dict[str, str]
    ) -> UpstreamBatch:
        dialect = dep.provider.batches
        assert dialect is not None
        out: list[bytes] = []
        for line in lines:
            upstream = dep.provider.chat_request(line.request.upstream_body(), dep, stream=False)
            body = orjson.loads(upstream.body or b"{}")
            out.append(orjson.dumps(dialect.input_line(line.custom_id, body, dep)))
        content = b"\n".join(out) + b"\n"
        raw = await self._send(dep, dialect.upload_request(dep, f"{batch_id}.jsonl", content))
        file_id = dialect.uploaded_id(raw)
        raw = await self._send(
            dep, dialect.create_request(dep, file_id, "/v1/chat/completions", metadata)
        )
        return dialect.read_batch(raw)

    async def _send(self, dep: Deployment, request: UpstreamRequest) -> bytes:
        return await read_answer(
            self.engine.transport, dep, request, dep.provider.timeouts, Attempts()
        )

    async def get(self, principal: Principal, batch_id: str) -> Any:
        row = await self.store.batch(batch_id)
        if row is None or not (principal.is_master or row.key_id == principal.key_id):
            raise NotFoundError(f"no batch '{batch_id}'", param="batch_id")
        return row

    async def list(
        self, principal: Principal, limit: int = 20, after: str | None = None
    ) -> list[Any]:
        return await self.store.batches(
            principal.key_id, everyone=principal.is_master, limit=limit, after=after
        )

    async def cancel(self, principal: Principal, batch_id: str) -> Any:
        """Ask the provider to stop; what finished is billed when the job ends."""
        row = await self.get(principal, batch_id)
        if row.status in TERMINAL:
            raise InvalidRequestError(f"batch '{batch_id}' is {row.status}; it cannot be cancelled")
        dep = self._deployment(row.deployment)
        if dep is None or dep.provider.batches is None:
            raise InvalidRequestError(
                f"batch '{batch_id}' ran on deployment '{row.deployment}', which is no longer "
                "configured; it cannot be cancelled from here"
            )
        raw = await self._send(dep, dep.provider.batches.cancel_request(dep, row.upstream_id))
        await self._apply(row, dep, dep.provider.batches.read_batch(raw))
        return await self.get(principal, batch_id)

    # -- following a job ---------------------------------------------------------------
    async def sync(self, batch_id: str) -> bool:
        """Look at one job upstream under its lease (finishing it if it ended); False if
        another replica holds it or there is nothing to look at."""
        now = datetime.now(UTC)
        if not await self.store.lease(batch_id, now, LEASE_SECONDS):
            return False
        try:
            row = await self.store.batch(batch_id)
            if row is None or row.settled:
                return False
            dep = self._deployment(row.deployment)
            if dep is None or dep.provider.batches is None:
                log.warning("batch %s: deployment %s is gone", batch_id, row.deployment)
                await self._backoff(row)
                return False
            try:
                raw = await self._send(dep, dep.provider.batches.get_request(dep, row.upstream_id))
                await self._apply(row, dep, dep.provider.batches.read_batch(raw))
            except GatewayError as exc:
                log.warning("batch %s: could not read its job upstream: %s", batch_id, exc)
                await self._backoff(row)
                return False
            return True
        finally:
            await self.store.unlease(batch_id)

    async def sync_due(self) -> int:
        """Look at every job that is due; returns how many were looked at."""
        seen = 0
        for batch_id in await self.store.due(datetime.now(UTC)):
            try:
                seen += await self.sync(batch_id)
            except Exception:
                log.exception("batch %s could not be followed", batch_id)
        return seen

    async def _backoff(self, row: Any) -> None:
        failures = row.poll_failures + 1
        wait = min(self.config.max_poll_interval, self.config.poll_interval * 2**failures)
        await self.store.update(
            row.id,
            poll_failures=failures,
            next_poll_at=datetime.now(UTC) + timedelta(seconds=wait),
        )

    async def _apply(self, row: Any, dep: Deployment, upstream: UpstreamBatch) -> None:
        now = datetime.now(UTC)
        times = dict(row.times or {})
        times.setdefault(upstream.status, _unix(now))
        values: dict[str, Any] = {
            "status": upstream.status,
            "times": times,
            "request_completed": upstream.completed,
            "request_failed": upstream.failed,
            "poll_failures": 0,
            "next_poll_at": now + timedelta(seconds=self.config.poll_interval),
            "upstream_output_file": upstream.output_file_id,
            "upstream_error_file": upstream.error_file_id,
        }
        if upstream.total:
            values["request_total"] = upstream.total
        if upstream.errors:
            values["errors"] = upstream.errors
        if upstream.status in TERMINAL:
            values.update(await self._finish(row, dep, upstream))
        await self.store.update(row.id, **values)

    async def _finish(self, row: Any, dep: Deployment, upstream: UpstreamBatch) -> dict[str, Any]:
        """Fetch the result files, record each line, settle the reservation to their cost."""
        dialect = dep.provider.batches
        assert dialect is not None
        live_price = self.engine.setup.accountant.price(dep)
        price = batch_price(live_price, self.config.price_multiplier)
        values: dict[str, Any] = {}
        total = live = Decimal(0)
        known = True
        completed = failed = 0
        for kind, file_id in (
            ("output_file_id", upstream.output_file_id),
            ("error_file_id", upstream.error_file_id),
        ):
            if not file_id:
                continue
            raw = await self._send(dep, dialect.content_request(dep, file_id))
            results = read_results(raw, dep)
            ledger = self.engine.ledger
            for result in results:
                cost = line_cost(result, price)
                live_cost = line_cost(result, live_price, tier=None)
                if cost.total is None:
                    known = False
                else:
                    total += cost.total
                    live += live_cost.total or Decimal(0)
                if result.status == 200:
                    completed += 1
                else:
                    failed += 1
                if ledger is not None:
                    saved = line_saving(cost, live_cost) if result.status == 200 else None
                    ledger.submit(line_record(result, cost, row, dep, row.created_at, saved))
            content = b"".join(orjson.dumps(r.line) + b"\n" for r in results)
            file = StoredFile(
                _id("file-"),
                row.key_id,
                "batch_output",
                f"{row.id}_{kind[:-8]}.jsonl",
                len(content),
                datetime.now(UTC),
            )
            await self.store.add_file(file, content)
            values[kind] = file.id
        cost_usd = total if known else None
        values.update(
            cost_usd=cost_usd,
            live_cost_usd=live if known else None,
            settled=True,
            next_poll_at=None,
            request_completed=completed or upstream.completed,
            request_failed=failed or upstream.failed,
        )
        await self._settle(row, cost_usd)
        return values

    async def _settle(self, row: Any, cost: Decimal | None) -> None:
        admission = self._admissions.pop(row.id, None) or _admission(row.id, row.budget)
        if admission is None:
            return
        await self.engine.limits.settle(admission, tokens=0, cost=cost)

    def _deployment(self, deployment_id: str) -> Deployment | None:
        for deps in self.engine.setup.router.deployments.values():
            for dep in deps:
                if dep.id == deployment_id:
                    return dep
        return None


def _budget_state(admission: Admission | None) -> JSON:
    """What settling a reservation needs, should the process that made it be gone."""
    if admission is None:
        return {}
    return {
        "cost_units": admission.cost_units,
        "periods": admission.periods,
        "scopes": [
            {
                "scope": s.scope,
                "budget_usd": str(s.budget_usd),
                "budget_period": s.budget_period,
            }
            for s in admission.scopes
        ],
    }


def _admission(batch_id: str, state: JSON | None) -> Admission | None:
    if not state or not state.get("scopes"):
        return None
    scopes = tuple(
        ScopeLimits(
            scope=s["scope"], budget_usd=Decimal(s["budget_usd"]), budget_period=s["budget_period"]
        )
        for s in state["scopes"]
    )
    return Admission(batch_id, scopes, 0, int(state["cost_units"]), 0, dict(state["periods"]))


class BatchPoller:
    """Follows the jobs in the background: every ``tick`` seconds it looks at those due.
    Every replica runs one; a job's lease makes sure one of them looks at it at a time."""

    def __init__(self, batches: Batches, tick: float | None = None) -> None:
        self.batches = batches
        self.tick = tick if tick is not None else min(5.0, batches.config.poll_interval)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def poke(self) -> None:
        """Look now (tests, ``batches sync``)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.batches.sync_due()
            except Exception:
                log.exception("the batch poller failed; it tries again")
            self._wake.clear()
            wait = max(0.0, self.tick - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
