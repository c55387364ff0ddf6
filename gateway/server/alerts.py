"""Budget alerts: every ``alerts.check_interval`` seconds, each key and team with a budget is
compared with ``alerts.thresholds``; a threshold passed for the first time in the budget
period is claimed in the ledger (once across replicas) and POSTed to ``alerts.webhook_url``
as JSON, signed with HMAC-SHA256 (``X-Gateway-Signature: sha256=<hex>``) and retried with
backoff while the receiver fails."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from contextlib import suppress
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import httpx
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from gateway.config.schema import BudgetAlertsConfig
from gateway.engine import Engine
from gateway.keys import Team, VirtualKey
from gateway.keys.admin import budget_status
from gateway.ledger.alerts import BudgetAlert, claim, mark_delivered

log = logging.getLogger("gateway.alerts")
SIGNATURE_HEADER = "x-gateway-signature"


def signature(secret: str, body: bytes) -> str:
    """The value of ``X-Gateway-Signature`` for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(alert: BudgetAlert, period: str, resets_at: str | None) -> dict[str, Any]:
    return {
        "type": "budget.threshold",
        "scope": alert.scope,
        "id": alert.scope_id,
        "name": alert.name,
        "threshold_percent": alert.threshold,
        "spent_usd": str(alert.spent_usd),
        "budget_usd": str(alert.budget_usd),
        "period": period,
        "period_start": alert.period_start.isoformat(),
        "resets_at": resets_at,
    }


class _Refused(Exception):
    """The receiver answered, but not with 2xx."""


class BudgetAlerts:
    """Checks budgets and sends alerts; ``start`` runs the checks in the background."""

    def __init__(self, engine: Engine, config: BudgetAlertsConfig) -> None:
        self.engine = engine
        self.config = config
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        e = self.engine
        return bool(self.config.webhook_url) and e.ledger is not None and e.keys is not None

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="budget-alerts")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("budget alerts: the check failed")
            await asyncio.sleep(self.config.check_interval)

    async def check(self) -> list[BudgetAlert]:
        """Compare every budget with the thresholds once; return the alerts sent now."""
        keys, ledger = self.engine.keys, self.engine.ledger
        if keys is None or ledger is None or not self.config.webhook_url:
            return []
        items: list[tuple[Literal["key", "team"], Team | VirtualKey]] = [
            ("team", t) for t in await keys.list_teams() if t.budget_usd is not None
        ]
        items += [
            ("key", k)
            for k in await keys.list_keys()
            if k.budget_usd is not None and k.revoked_at is None
        ]
        sent = []
        for kind, item in items:
            status = await budget_status(item, kind, self.engine.limits, ledger)
            spent, budget = Decimal(status["spent_usd"]), Decimal(status["budget_usd"])
            if budget <= 0:
                continue
            passed = [t for t in self.config.thresholds if spent >= budget * Decimal(str(t))]
            if not passed:
                continue
            # Only the highest threshold passed is sent; lower ones are claimed with it, so a
            # jump from 0 to 100 % is one alert, not three.
            alerts = [
                BudgetAlert(
                    kind,
                    item.id,
                    item.name,
                    datetime.fromisoformat(status["since"]),
                    round(threshold * 100),
                    spent,
                    budget,
                )
                for threshold in sorted(passed)
            ]
            claimed = [await claim(ledger.engine, alert) for alert in alerts]
            if claimed[-1]:  # the highest threshold passed is new in this period
                await self.deliver(alerts[-1], status["period"], status["resets_at"])
                sent.append(alerts[-1])
        return sent

    async def deliver(self, alert: BudgetAlert, period: str, resets_at: str | None) -> bool:
        """POST the alert, retried with backoff; False (logged) if every attempt failed."""
        assert self.config.webhook_url is not None
        body = orjson.dumps(payload(alert, period, resets_at))
        headers = {"content-type": "application/json"}
        if self.config.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.config.secret.get_secret_value(), body)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.attempts),
            wait=wait_exponential(multiplier=0.2, max=10),
            retry=retry_if_exception_type((httpx.HTTPError, _Refused)),
            reraise=True,
        )
        try:
            async with httpx.AsyncClient(timeout=self.config.timeout) as client:
                async for attempt in retrying:
                    with attempt:
                        answer = await client.post(
                            self.config.webhook_url, content=body, headers=headers
                        )
                        if not answer.is_success:
                            raise _Refused(f"the webhook answered {answer.status_code}")
        except (httpx.HTTPError, _Refused) as exc:
            self.failed += 1
            log.error(
                "budget alert for %s %s (%d%%) not delivered after %d attempts: %s",
                alert.scope,
                alert.name,
                alert.threshold,
                self.config.attempts,
                exc,
            )
            return False
        self.sent += 1
        assert self.engine.ledger is not None
        await mark_delivered(self.engine.ledger.engine, alert)
        return True
