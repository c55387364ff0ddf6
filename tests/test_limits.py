"""Rate limits, parallel caps and budget reservations, on both backends (memory and the real
Redis): what is admitted, what is refused with which answer, and that nothing overspends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.errors import RateLimitError
from gateway.limits import BudgetExceededError, Limits, MemoryLimits, ScopeLimits
from gateway.limits.base import BudgetShortfall
from gateway.limits.redis import RedisLimits

CENT = Decimal("0.01")


def rid() -> str:
    return uuid.uuid4().hex


@pytest.fixture(params=["memory", "redis"])
async def make_limits(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A factory of limits backends; with Redis, several instances share one prefix, as
    replicas of one gateway do."""
    made: list[Limits] = []
    prefix = f"llm-gateway-test:{uuid.uuid4().hex}:"
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def make(seed: Any = None) -> Limits:
        limits: Limits
        if request.param == "memory":
            limits = MemoryLimits(seed=seed)
        else:
            limits = RedisLimits.from_url(url, prefix=prefix, seed=seed)
        made.append(limits)
        return limits

    yield make
    for limits in made:
        await limits.aclose()
    if request.param == "redis":
        client = aioredis.Redis.from_url(url)
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_rpm_refuses_the_request_over_the_limit_with_openai_headers(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:a", rpm=3)
    for _ in range(3):
        await limits.admit(rid(), (key,), tokens=1, cost=CENT)
    with pytest.raises(RateLimitError) as caught:
        await limits.admit(rid(), (key,), tokens=1, cost=CENT)
    err = caught.value
    assert err.status == 429 and "key:a" in err.message and "3 requests per minute" in err.message
    assert 1 <= int(err.headers["retry-after"]) <= 60
    assert err.headers["x-ratelimit-limit-requests"] == "3"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"].endswith("s")


async def test_admission_reports_remaining_requests_and_tokens(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:h", rpm=10, tpm=1000)
    admission = await limits.admit(rid(), (key,), tokens=100, cost=CENT)
    assert admission.headers["x-ratelimit-remaining-requests"] == "9"
    assert admission.headers["x-ratelimit-remaining-tokens"] == "900"


async def test_tpm_reserves_the_estimate_and_settles_to_the_actual_count(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:t", tpm=1000)
    first = await limits.admit(rid(), (key,), tokens=800, cost=CENT)
    with pytest.raises(RateLimitError, match="tokens per minute"):
        await limits.admit(rid(), (key,), tokens=300, cost=CENT)
    await limits.settle(first, tokens=200, cost=CENT)
    await limits.admit(rid(), (key,), tokens=300, cost=CENT)


async def test_parallel_cap_frees_a_slot_when_a_request_ends(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:p", max_parallel=2)
    one = await limits.admit(rid(), (key,), tokens=1, cost=CENT)
    await limits.admit(rid(), (key,), tokens=1, cost=CENT)
    with pytest.raises(RateLimitError, match="in parallel"):
        await limits.admit(rid(), (key,), tokens=1, cost=CENT)
    await limits.release(one)
    await limits.admit(rid(), (key,), tokens=1, cost=CENT)


async def test_budget_refusal_names_budget_spend_and_reset_and_is_not_retryable(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:b", budget_usd=Decimal("1.00"), budget_period="daily")
    admission = await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.70"))
    await limits.settle(admission, tokens=1, cost=Decimal("0.70"))
    with pytest.raises(BudgetExceededError) as caught:
        await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.40"))
    err = caught.value
    assert err.status == 429 and err.code == "budget_exceeded"
    assert err.headers["x-should-retry"] == "false"
    assert "$1.00" in err.message and "$0.7000" in err.message and "resets" in err.message


async def test_reservations_stop_concurrent_requests_from_overspending(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:c", budget_usd=Decimal("1.00"), budget_period="total")
    price = Decimal("0.10")

    async def one() -> bool:
        try:
            admission = await limits.admit(rid(), (key,), tokens=1, cost=price)
        except BudgetExceededError:
            return False
        await asyncio.sleep(0.01)
        await limits.settle(admission, tokens=1, cost=price)
        return True

    results = await asyncio.gather(*(one() for _ in range(200)))
    assert sum(results) == 10  # the worst-case reservation equals the real cost: no slack
    assert await limits.spent(key) == Decimal("1.00")


async def test_released_reservation_is_not_spent(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:r", budget_usd=Decimal("0.50"), budget_period="total")
    admission = await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.50"))
    await limits.release(admission)
    assert await limits.spent(key) == 0
    await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.50"))


async def test_unknown_actual_cost_keeps_the_reservation_as_spend(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:u", budget_usd=Decimal("1"), budget_period="total")
    admission = await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.25"))
    await limits.settle(admission, tokens=1, cost=None)
    assert await limits.spent(key) == Decimal("0.25")


async def test_team_refusal_reserves_nothing_on_the_key(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:k", rpm=100, budget_usd=Decimal("10"), budget_period="total")
    team = ScopeLimits("team:t", budget_usd=Decimal("0.05"), budget_period="total")
    with pytest.raises(BudgetExceededError, match="team:t"):
        await limits.admit(rid(), (key, team), tokens=1, cost=Decimal("0.10"))
    admission = await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.10"))
    assert admission.headers["x-ratelimit-remaining-requests"] == "99"  # first counted request


async def test_budget_starts_from_the_ledgers_spend(make_limits):
    async def seed(scope: str, period: str) -> Decimal:
        return Decimal("0.95") if scope == "key:s" else Decimal(0)

    limits = make_limits(seed)
    key = ScopeLimits("key:s", budget_usd=Decimal("1.00"), budget_period="monthly")
    with pytest.raises(BudgetExceededError):
        await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.10"))
    await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.05"))


async def test_decimal_spend_is_exact(make_limits):
    limits = make_limits()
    key = ScopeLimits("key:x", budget_usd=Decimal("100"), budget_period="total")
    tiny = Decimal("0.0000012345")
    for _ in range(50):
        admission = await limits.admit(rid(), (key,), tokens=1, cost=tiny)
        await limits.settle(admission, tokens=1, cost=tiny)
    assert await limits.spent(key) == tiny * 50


async def test_replicas_sharing_redis_enforce_one_limit(redis_url):
    prefix = f"llm-gateway-test:{uuid.uuid4().hex}:"
    a = RedisLimits.from_url(redis_url, prefix=prefix)
    b = RedisLimits.from_url(redis_url, prefix=prefix)
    key = ScopeLimits("key:shared", rpm=10)
    try:

        async def one(limits: RedisLimits) -> bool:
            try:
                await limits.admit(rid(), (key,), tokens=1, cost=CENT)
            except RateLimitError:
                return False
            return True

        results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(40)))
        assert sum(results) == 10
    finally:
        client = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await a.aclose()
        await b.aclose()


async def test_budget_refusal_says_what_the_scope_has_left(make_limits):
    """What a smaller request could still reserve: budget - spent - reserved, exactly."""
    limits = make_limits()
    key = ScopeLimits("key:left", budget_usd=Decimal("1.00"), budget_period="total")
    spent = await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.30"))
    await limits.settle(spent, tokens=1, cost=Decimal("0.2500000001"))
    await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.50"))  # in flight
    with pytest.raises(BudgetShortfall) as caught:
        await limits.admit(rid(), (key,), tokens=1, cost=Decimal("0.30"))
    assert caught.value.remaining == Decimal("0.2499999999")
