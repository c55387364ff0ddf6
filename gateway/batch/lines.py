"""The lines of a batch: reading the caller's input file, pricing lines at batch prices, and
turning a provider's result lines into OpenAI's shape and ledger records."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from pydantic import ValidationError

from gateway.accounting import output_reserve, price_effective, price_source, reserve_rates
from gateway.costs import Cost, Price, compute_cost, unknown_cost
from gateway.costs.media import media_token_bound
from gateway.errors import GatewayError, InvalidRequestError
from gateway.ledger.records import SpendRecord, token_counts
from gateway.types import ChatCompletionRequest
from gateway.wire import JSON, UpstreamRequest
from providers.base import Deployment

BATCH_TIER = "batch"
# The endpoints a batch may name (OpenAI's spelling; each dialect says it its own way).
ENDPOINTS = frozenset({"/v1/chat/completions"})


@dataclass(slots=True)
class InputLine:
    custom_id: str
    request: ChatCompletionRequest


def read_input(content: bytes, endpoint: str) -> list[InputLine]:
    """The lines of an input file, each checked as OpenAI checks them: a JSON object with a
    unique ``custom_id``, ``method: POST``, the batch's ``url`` and a chat request ``body``;
    every line names the same model."""
    lines: list[InputLine] = []
    seen: set[str] = set()
    model: str | None = None
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"input file line {number}"
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequestError(f"{where} is not JSON", param="input_file_id") from None
        if not isinstance(data, dict):
            raise InvalidRequestError(f"{where} is not a JSON object", param="input_file_id")
        custom_id = data.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise InvalidRequestError(f"{where} has no custom_id", param="input_file_id")
        if custom_id in seen:
            raise InvalidRequestError(
                f"{where} repeats custom_id '{custom_id}'; each line needs its own",
                param="input_file_id",
            )
        seen.add(custom_id)
        if data.get("method", "POST") != "POST" or data.get("url", endpoint) != endpoint:
            raise InvalidRequestError(
                f"{where} must say method POST and url {endpoint} (the batch's endpoint)",
                param="input_file_id",
            )
        try:
            request = ChatCompletionRequest.model_validate(data.get("body"))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidRequestError(
                f"{where}: body.{field}: {first['msg']}", param="input_file_id"
            ) from None
        if request.stream:
            raise InvalidRequestError(f"{where} asks to stream; batch lines cannot")
        if model is not None and request.model != model:
            raise InvalidRequestError(
                f"{where} names model '{request.model}', line 1 '{model}'; a batch runs one model",
                param="input_file_id",
            )
        model = request.model
        lines.append(InputLine(custom_id, request))
    if not lines:
        raise InvalidRequestError("the input file has no lines", param="input_file_id")
    return lines


def batch_price(price: Price | None, multiplier: Decimal) -> Price | None:
    """``price`` for batch jobs: the catalog's batch price where it has one, else the
    standard price times ``multiplier`` (``batches.price_multiplier``)."""
    if price is None:
        return None
    tiers = dict(price.service_tiers)
    if BATCH_TIER in tiers or BATCH_TIER in dict(price.tier_multipliers):
        return price
    return replace(price, tier_multipliers=(*price.tier_multipliers, (BATCH_TIER, multiplier)))


def worst_case(line: InputLine, price: Price, dep: Deployment, default_max_output: int) -> Decimal:
    """The most one line can cost at batch prices: its prompt bound plus its output cap (or
    the model's), as a live call reserves."""
    request = line.request
    prompt = request.prompt_token_bound(media_token_bound(price))
    cap = (
        request.max_completion_tokens
        or request.max_tokens
        or price.max_output_tokens
        or output_reserve(dep, default_max_output)
    )
    rate_in, rate_out = reserve_rates(price, BATCH_TIER)
    return (prompt * rate_in + cap * (request.n or 1) * rate_out) / 10**6


@dataclass(slots=True)
class Result:
    """One result line: what the caller reads, and what the ledger keeps."""

    line: JSON  # OpenAI's shape
    custom_id: str
    status: int
    usage: JSON | None
    upstream_model: str | None
    error_type: str | None = None


def read_results(content: bytes, dep: Deployment | None) -> list[Result]:
    """A provider's result (or error) file as OpenAI result lines; answers are read by the
    deployment's chat adapter, so they are as OpenAI-shaped as its live answers."""
    out: list[Result] = []
    dialect = dep.provider.batches if dep is not None else None
    for raw in content.splitlines():
        if not raw.strip():
            continue
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        if dialect is not None:
            data = dialect.result_line(data)
        out.append(_result(data, dep))
    return out


def _result(data: JSON, dep: Deployment | None) -> Result:
    response = data.get("response") if isinstance(data.get("response"), dict) else None
    error = data.get("error") if isinstance(data.get("error"), dict) else None
    body: Any = response.get("body") if response else None
    status = int(response.get("status_code") or 0) if response else 0
    if not status:
        status = 200 if isinstance(body, dict) and error is None else 500
    usage = None
    model = None
    if status == 200 and isinstance(body, dict) and dep is not None:
        # An answer its adapter cannot read is passed on as the provider wrote it.
        with contextlib.suppress(GatewayError):
            body = dep.provider.chat_response(orjson.dumps(body), dep, UpstreamRequest("POST", ""))
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        model = body.get("model") if isinstance(body.get("model"), str) else None
    line: JSON = {
        "id": str(data.get("id") or f"batch_req_{uuid.uuid4().hex}"),
        "custom_id": data.get("custom_id"),
        "response": None
        if response is None
        else {
            "status_code": status,
            "request_id": str(response.get("request_id") or uuid.uuid4().hex),
            "body": body,
        },
        "error": error,
    }
    etype = None
    if status != 200:
        detail = (body or {}).get("error") if isinstance(body, dict) else None
        code = (detail or error or {}).get("code") if isinstance(detail or error, dict) else None
        etype = str(code) if code else "batch_line_failed"
    return Result(line, str(data.get("custom_id") or ""), status, usage, model, etype)


def line_cost(result: Result, price: Price | None, tier: str | None = BATCH_TIER) -> Cost:
    """A line's cost at batch prices (``tier`` None: at live prices, for what a batch
    saved); a failed line costs nothing (the provider bills only completed requests)."""
    if result.status != 200:
        return Cost(total=Decimal(0), price=price)
    if price is None:
        return unknown_cost("no price is known for this model")
    return compute_cost(result.usage, price, service_tier=tier)


def line_saving(cost: Cost, live: Cost) -> Decimal | None:
    """What running a line in a batch saved: its cost at live prices minus its batch cost
    (None when either is unknown)."""
    if cost.total is None or live.total is None:
        return None
    return live.total - cost.total


def line_record(
    result: Result,
    cost: Cost,
    batch: Any,
    dep: Deployment | None,
    started: datetime,
    saved: Decimal | None = None,
) -> SpendRecord:
    """The ledger record of one result line (``operation: batch``; its batch id and
    ``custom_id`` are in its tags; ``saved_usd``: its live cost minus its batch cost)."""
    counts = token_counts(result.usage)
    price = cost.price
    return SpendRecord(
        request_id=f"{batch.id}:{result.custom_id}"[:255],
        started_at=started,
        finished_at=datetime.now(UTC),
        model=batch.model,
        status=result.status,
        operation="batch",
        key_id=batch.key_id,
        team=batch.team,
        tags={"batch_id": batch.id, "custom_id": result.custom_id},
        provider=batch.provider,
        deployment=batch.deployment,
        upstream_model=result.upstream_model,
        region=dep.region if dep is not None else None,
        attempts=1,
        error_type=result.error_type,
        prompt_tokens=counts.prompt,
        cached_tokens=counts.cached,
        completion_tokens=counts.completion,
        reasoning_tokens=counts.reasoning,
        cost_usd=cost.total,
        cost_note=cost.reason,
        price_family=price.family if price is not None else None,
        price_model=price.model if price is not None else None,
        price_source=price_source(price),
        price_effective=price_effective(price),
        saved_usd=saved,
    )
