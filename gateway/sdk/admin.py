"""Spend and keys from Python: ``client.spend`` and ``client.keys``, one interface four ways.

``GatewayClient`` / ``AsyncGatewayClient`` ask a running gateway over HTTP (``/v1/spend…``,
``/admin/keys…``, with the master key or an admin key; the requests and their parsing are
here, ``gateway.sdk.remote`` sends them); ``Gateway`` / ``AsyncGateway`` read the engine's
ledger and key store in-process (``gateway.sdk.local``). Either way the answers are the same
small typed values: ``SpendReport`` (rows and a total, money as ``Decimal``),
``SpendRecordView`` (one request), ``KeyInfo`` (a key's public view, never its secret) and
``CreatedKey`` (a key with its plaintext, shown once). ``to_pandas()`` turns reports and
records into DataFrames when pandas is installed (it is not a dependency).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, Required, TypedDict, Unpack
from urllib.parse import quote

import orjson

from gateway.facts import usd_str
from gateway.ledger.records import AttemptEntry, SpendRecord
from gateway.sdk.protocol import ApiRequest, Headers

Moment = str | datetime | None  # "7d", "24h", an ISO date or timestamp, or a datetime
Page = tuple[list["SpendRecordView"], str | None]


def _pandas() -> Any:
    try:
        return importlib.import_module("pandas")
    except ImportError:
        raise ImportError(
            "to_pandas() needs pandas, which llm-gateway does not depend on; "
            "install it with `pip install pandas`"
        ) from None


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _moment(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


# --- typed results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpendReportRow:
    """One group of a spend report (``group`` is None in the total and for an unset key,
    team or user). ``cost_usd`` sums the known costs; ``unknown_cost_requests`` counts the
    requests whose cost is unknown and left out."""

    group: str | None
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unknown_cost_requests: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any], group: str | None = None) -> SpendReportRow:
        return cls(
            group=data.get("group", group),
            requests=int(data["requests"]),
            errors=int(data["errors"]),
            prompt_tokens=int(data["prompt_tokens"]),
            cached_tokens=int(data["cached_tokens"]),
            completion_tokens=int(data["completion_tokens"]),
            reasoning_tokens=int(data["reasoning_tokens"]),
            # null: every request's cost is unknown (none of it is known, not $0)
            cost_usd=Decimal(str(data["cost_usd"] or 0)),
            unknown_cost_requests=int(data["unknown_cost_requests"]),
        )

    @property
    def cost(self) -> Decimal | None:
        """None when every request's cost is unknown; else ``cost_usd`` (a lower bound when
        ``unknown_cost_requests`` is not 0)."""
        if self.requests and self.unknown_cost_requests >= self.requests:
            return None
        return self.cost_usd

    @classmethod
    def from_sums(cls, row: object) -> SpendReportRow:
        """From a ledger report's row (``gateway.ledger.reports.SpendRow``): the same fields."""
        values = {f.name: getattr(row, f.name) for f in fields(cls)}
        values["cost_usd"] = Decimal(usd_str(values["cost_usd"]))  # as the HTTP API writes it
        return cls(**values)

    def __repr__(self) -> str:
        return (
            f"SpendReportRow(group={self.group!r}, requests={self.requests}, "
            f"errors={self.errors}, tokens={self.prompt_tokens}+{self.completion_tokens}, "
            f"cost_usd={usd_str(self.cost_usd)}, "
            f"unknown_cost_requests={self.unknown_cost_requests})"
        )


@dataclass(frozen=True, slots=True)
class SpendReport:
    """What was spent in ``[since, until)``, grouped by ``group_by``, and the ``total``."""

    group_by: str
    since: datetime
    until: datetime
    rows: list[SpendReportRow]
    total: SpendReportRow

    def __iter__(self) -> Iterator[SpendReportRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (
            f"SpendReport(group_by={self.group_by!r}, since={self.since.isoformat()!r}, "
            f"until={self.until.isoformat()!r}, rows={len(self.rows)}, "
            f"requests={self.total.requests}, cost_usd={usd_str(self.total.cost_usd)})"
        )

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame`` (``cost_usd`` stays exact, as Decimal)."""
        pd = _pandas()
        columns = [f.name for f in fields(SpendReportRow)]
        return pd.DataFrame([asdict(row) for row in self.rows], columns=columns)


# A spend record is the ledger's own SpendRecord on every client; the name stays for callers.
SpendRecordView = SpendRecord


def record_from_json(data: dict[str, Any]) -> SpendRecord:
    """A record as ``/v1/spend/records`` sends it (ISO times, cost as a decimal string)."""
    names = {f.name for f in fields(SpendRecord)}
    values = {k: v for k, v in data.items() if k in names}
    values["started_at"] = _moment(values["started_at"])
    values["finished_at"] = _moment(values["finished_at"])
    values["cost_usd"] = _decimal(values.get("cost_usd"))
    values["adjusted_cost_usd"] = _decimal(values.get("adjusted_cost_usd"))
    values["attempt_log"] = tuple(
        AttemptEntry(**{**a, "started_at": _moment(a["started_at"])})
        for a in values.get("attempt_log") or ()
    )
    return SpendRecord(**values)


def records_to_pandas(records: Iterable[SpendRecordView]) -> Any:
    """Records as a ``pandas.DataFrame``, one row each (``cost_usd`` as Decimal or None)."""
    pd = _pandas()
    columns = [f.name for f in fields(SpendRecord)]
    return pd.DataFrame([asdict(r) for r in records], columns=columns)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A virtual key's public view: its ``prefix``, never its hash or plaintext."""

    id: str
    name: str
    prefix: str
    team_id: str | None = None
    admin: bool = False
    allowed_models: list[str] = field(default_factory=list)
    regions: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_usd: Decimal | None = None
    budget_period: str = "monthly"
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyInfo:
        """From the admin API's JSON or ``VirtualKey.public()`` (the same shape)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["budget_usd"] = _decimal(values.get("budget_usd"))
        for name in ("created_at", "expires_at", "revoked_at"):
            values[name] = _moment(values.get(name))
        return cls(**values)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def __repr__(self) -> str:
        state = "revoked" if self.revoked else "active"
        return (
            f"KeyInfo(id={self.id!r}, name={self.name!r}, prefix={self.prefix!r}, "
            f"team_id={self.team_id!r}, {state})"
        )


def keys_to_pandas(keys: Iterable[KeyInfo]) -> Any:
    """Keys' public views as a ``pandas.DataFrame``."""
    pd = _pandas()
    return pd.DataFrame([asdict(k) for k in keys], columns=[f.name for f in fields(KeyInfo)])


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just created or rotated: ``key`` is its plaintext, shown this once — store it
    now; ``info`` its public view."""

    key: str
    info: KeyInfo

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def prefix(self) -> str:
        return self.info.prefix

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CreatedKey:
        return cls(key=str(data["key"]), info=KeyInfo.from_json(data))

    def __repr__(self) -> str:  # never the whole secret in logs
        return f"CreatedKey(id={self.id!r}, name={self.info.name!r}, key='{self.prefix}…')"


# --- the paging iterators -------------------------------------------------------------------


class SpendRecords:
    """Records oldest first, fetched a page at a time as iteration reaches them."""

    def __init__(self, fetch: Callable[[str | None], Page]) -> None:
        self._fetch = fetch
        self._iter = self._iterate()

    def _iterate(self) -> Iterator[SpendRecordView]:
        cursor: str | None = None
        while True:
            records, cursor = self._fetch(cursor)
            yield from records
            if cursor is None:
                return

    def __iter__(self) -> Iterator[SpendRecordView]:
        return self

    def __next__(self) -> SpendRecordView:
        return next(self._iter)

    def to_pandas(self) -> Any:
        """The records not yet iterated, as a ``pandas.DataFrame``."""
        _pandas()  # fail before reading every page
        return records_to_pandas(self)


class AsyncSpendRecords:
    """Records oldest first, for ``async for``, fetched a page at a time."""

    def __init__(self, fetch: Callable[[str | None], Awaitable[Page]]) -> None:
        self._fetch = fetch
        self._iter = self._iterate()

    async def _iterate(self) -> AsyncIterator[SpendRecordView]:
        cursor: str | None = None
        while True:
            records, cursor = await self._fetch(cursor)
            for record in records:
                yield record
            if cursor is None:
                return

    def __aiter__(self) -> AsyncIterator[SpendRecordView]:
        return self

    async def __anext__(self) -> SpendRecordView:
        return await anext(self._iter)

    async def to_list(self) -> list[SpendRecordView]:
        return [record async for record in self]

    async def to_pandas(self) -> Any:
        """The records not yet iterated, as a ``pandas.DataFrame``."""
        _pandas()
        return records_to_pandas(await self.to_list())


# --- what the namespaces ask of a backend, and how a running gateway is asked -------------


class AdminBackend(Protocol):
    """Spend and keys, in-process or remote; sync backends return results, async ones
    awaitables of them."""

    def report(self, group_by: str, since: Moment, until: Moment, key_id: str | None) -> Any: ...
    def page(
        self, since: Moment, until: Moment, key_id: str | None, size: int, cursor: str | None
    ) -> Any: ...
    def create_key(self, spec: dict[str, Any]) -> Any: ...
    def list_keys(self) -> Any: ...
    def revoke_key(self, key_id: str) -> Any: ...
    def rotate_key(self, key_id: str) -> Any: ...


def moment_text(value: Moment) -> str | None:
    """A moment as the HTTP API and the period parser take it."""
    return value.isoformat() if isinstance(value, datetime) else value


def report_request(group_by: str, since: Moment, until: Moment, key_id: str | None) -> ApiRequest:
    params = {
        "group_by": group_by,
        "since": moment_text(since),
        "until": moment_text(until),
        "key_id": key_id,
    }
    return ApiRequest("GET", "/spend", params={k: v for k, v in params.items() if v is not None})


def page_request(
    since: Moment, until: Moment, key_id: str | None, size: int, cursor: str | None
) -> ApiRequest:
    params = {
        "since": moment_text(since),
        "until": moment_text(until),
        "key_id": key_id,
        "limit": str(size),
        "cursor": cursor,
    }
    return ApiRequest(
        "GET", "/spend/records", params={k: v for k, v in params.items() if v is not None}
    )


def key_request(method: str, path: str, body: dict[str, Any] | None = None) -> ApiRequest:
    if body is not None:
        body = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in body.items()}
    return ApiRequest(method, path, body, root=True)


def revoke_request(key_id: str) -> ApiRequest:
    return key_request("POST", f"/admin/keys/{quote(key_id)}/revoke")


def rotate_request(key_id: str) -> ApiRequest:
    return key_request("POST", f"/admin/keys/{quote(key_id)}/rotate")


def parse_report(body: bytes, headers: Headers) -> SpendReport:
    data = orjson.loads(body)
    return SpendReport(
        group_by=data["group_by"],
        since=datetime.fromisoformat(data["since"]),
        until=datetime.fromisoformat(data["until"]),
        rows=[SpendReportRow.from_json(row) for row in data["data"]],
        total=SpendReportRow.from_json(data["total"]),
    )


def parse_page(body: bytes, headers: Headers) -> Page:
    data = orjson.loads(body)
    return [record_from_json(r) for r in data["data"]], data.get("next_cursor")


def parse_created(body: bytes, headers: Headers) -> CreatedKey:
    return CreatedKey.from_json(orjson.loads(body))


def parse_key(body: bytes, headers: Headers) -> KeyInfo:
    return KeyInfo.from_json(orjson.loads(body))


def parse_keys(body: bytes, headers: Headers) -> list[KeyInfo]:
    return [KeyInfo.from_json(k) for k in orjson.loads(body)["data"]]


# --- the namespaces -------------------------------------------------------------------------


class NewKey(TypedDict, total=False):
    """What ``client.keys.create`` takes; the rules are the admin API's (``gateway.keys.admin``).
    ``budget_usd`` is exact (a Decimal or a string such as "2.50"); ``expires_in_days`` may
    be fractional; ``team`` is a team's id or name."""

    name: Required[str]
    team: str | None
    allowed_models: list[str] | None
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    budget_usd: Decimal | str | int | None
    budget_period: str | None
    expires_in_days: float | None
    regions: list[str] | None
    metadata: dict[str, Any] | None


def _key_spec(given: NewKey) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


class Spend:
    """``client.spend``: what was spent (the master key or an admin key, when remote)."""

    def __init__(self, backend: AdminBackend) -> None:
        self._backend = backend

    def report(
        self,
        group_by: str = "model",
        since: Moment = "7d",
        until: Moment = None,
        key_id: str | None = None,
    ) -> SpendReport:
        """Spend in ``[since, until)`` grouped by ``model``, ``key``, ``team``, ``user``,
        ``provider`` or ``day``; ``since``/``until`` as ``7d``, ``24h``, an ISO date or
        timestamp, or a datetime (``until`` defaults to now)."""
        result: SpendReport = self._backend.report(group_by, since, until, key_id)
        return result

    def records(
        self,
        since: Moment = "7d",
        until: Moment = None,
        key_id: str | None = None,
        page_size: int = 100,
    ) -> SpendRecords:
        """Every record in ``[since, until)``, oldest first, fetched ``page_size`` at a time."""
        return SpendRecords(lambda c: self._backend.page(since, until, key_id, page_size, c))


class Keys:
    """``client.keys``: virtual keys (the master key or an admin key, when remote)."""

    def __init__(self, backend: AdminBackend) -> None:
        self._backend = backend

    def create(self, **spec: Unpack[NewKey]) -> CreatedKey:
        """A new key; its plaintext (``.key``) is shown this once."""
        result: CreatedKey = self._backend.create_key(_key_spec(spec))
        return result

    def list(self) -> list[KeyInfo]:
        """Every key's public view (prefix only)."""
        result: list[KeyInfo] = self._backend.list_keys()
        return result

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key for good."""
        result: KeyInfo = self._backend.revoke_key(key_id)
        return result

    def rotate(self, key_id: str) -> CreatedKey:
        """A new plaintext for the same key (same id, limits and spend)."""
        result: CreatedKey = self._backend.rotate_key(key_id)
        return result


class AsyncSpend:
    """``client.spend`` for asyncio code; see ``Spend``."""

    def __init__(self, backend: AdminBackend) -> None:
        self._backend = backend

    async def report(
        self,
        group_by: str = "model",
        since: Moment = "7d",
        until: Moment = None,
        key_id: str | None = None,
    ) -> SpendReport:
        """See ``Spend.report``."""
        result: SpendReport = await self._backend.report(group_by, since, until, key_id)
        return result

    def records(
        self,
        since: Moment = "7d",
        until: Moment = None,
        key_id: str | None = None,
        page_size: int = 100,
    ) -> AsyncSpendRecords:
        """See ``Spend.records``; iterate with ``async for``."""
        return AsyncSpendRecords(lambda c: self._backend.page(since, until, key_id, page_size, c))


class AsyncKeys:
    """``client.keys`` for asyncio code; see ``Keys``."""

    def __init__(self, backend: AdminBackend) -> None:
        self._backend = backend

    async def create(self, **spec: Unpack[NewKey]) -> CreatedKey:
        """See ``Keys.create``."""
        result: CreatedKey = await self._backend.create_key(_key_spec(spec))
        return result

    async def list(self) -> list[KeyInfo]:
        result: list[KeyInfo] = await self._backend.list_keys()
        return result

    async def revoke(self, key_id: str) -> KeyInfo:
        result: KeyInfo = await self._backend.revoke_key(key_id)
        return result

    async def rotate(self, key_id: str) -> CreatedKey:
        result: CreatedKey = await self._backend.rotate_key(key_id)
        return result
