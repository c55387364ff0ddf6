"""``llm-gateway logs``: a running gateway's last requests, one line each, as they come in
(``--follow``), read from ``GET /v1/spend/records`` with its filters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

# A record reaches the ledger when its request ends, stamped with when it started: a long
# stream shows up late. Following re-reads this much history and skips what it printed.
LOOKBACK = timedelta(minutes=15)
PAGE = 1000


def add_logs_command(app: typer.Typer) -> None:
    app.command("logs")(logs)


def logs(
    url: Annotated[
        str, typer.Option(help="The running gateway, e.g. http://127.0.0.1:4000.")
    ] = "http://127.0.0.1:4000",
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="GATEWAY_MASTER_KEY", help="The master key or an admin key."
        ),
    ] = None,
    since: Annotated[
        str, typer.Option(help="From: 30m, 24h, 7d before now, or an ISO date or time.")
    ] = "1h",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing requests as they arrive.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between reads with --follow.")] = 2.0,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    deployment: Annotated[
        str | None, typer.Option(help="Only requests that tried this deployment.")
    ] = None,
    status: Annotated[str | None, typer.Option(help="ok, error or an HTTP status.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team (id).")] = None,
    key_id: Annotated[str | None, typer.Option("--key-id", help="Only this key (id).")] = None,
    cost_above: Annotated[
        str | None, typer.Option(help="Only requests that cost more (USD).")
    ] = None,
) -> None:
    """Print a gateway's requests, oldest first: time, status, model, deployment, attempts,
    latency, cost, key and request id; failed attempts on a line of their own."""
    import httpx

    base = url.rstrip("/").removesuffix("/v1")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    filters = {
        "model": model,
        "deployment": deployment,
        "status": status,
        "team": team,
        "key_id": key_id,
        "cost_above": cost_above,
    }
    params = {k: v for k, v in filters.items() if v is not None}
    seen: dict[str, datetime] = {}
    start: str = since
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        while True:
            for record in _read(client, {**params, "since": start}):
                if record["request_id"] in seen:
                    continue
                seen[record["request_id"]] = datetime.fromisoformat(record["started_at"])
                typer.echo(line(record))
                for attempt_line in failed_attempts(record):
                    typer.echo(attempt_line)
            if not follow:
                return
            time.sleep(interval)
            horizon = datetime.now(UTC) - LOOKBACK
            seen = {k: v for k, v in seen.items() if v >= horizon}
            start = horizon.isoformat()


def _read(client: Any, params: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Every record the gateway lists for ``params``, page by page."""
    cursor: str | None = None
    while True:
        query = {**params, "limit": str(PAGE), **({"cursor": cursor} if cursor else {})}
        try:
            response = client.get("/v1/spend/records", params=query)
        except Exception as exc:
            typer.echo(f"could not reach {client.base_url}: {exc}", err=True)
            raise typer.Exit(1) from None
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            typer.echo(f"{client.base_url} answered {response.status_code}: {message}", err=True)
            raise typer.Exit(1)
        body = response.json()
        yield from body["data"]
        cursor = body.get("next_cursor")
        if not cursor:
            return


def line(record: dict[str, Any]) -> str:
    """One request on one line."""
    at = datetime.fromisoformat(record["started_at"]).astimezone(UTC).strftime("%H:%M:%S")
    cost = record.get("cost_usd")
    parts = [
        at,
        str(record["status"]),
        record["model"],
        record.get("deployment") or "-",
        f"{len(record.get('attempt_log') or [])} att",
        f"{record['latency_ms']:.0f}ms",
        "cost unknown" if cost is None else f"${cost}",
        f"key {record.get('key_id') or 'master'}",
        record["request_id"],
    ]
    if record.get("error_type"):
        parts.insert(2, record["error_type"])
    return "  ".join(parts)


def failed_attempts(record: dict[str, Any]) -> list[str]:
    """A line per failed attempt, under its request."""
    out = []
    for i, attempt in enumerate(record.get("attempt_log") or [], start=1):
        status = attempt.get("status")
        if attempt.get("error_type") or status is None or status >= 400:
            answer = "no answer" if status is None else str(status)
            out.append(
                f"    attempt {i}: {attempt['deployment']} {answer} "
                f"{attempt.get('error_type') or ''} {attempt['latency_ms']:.0f}ms".rstrip()
            )
    return out
