"""Limits shared by every gateway replica, in Redis: each step is one Lua script, so checks
and reservations across a key and its team are atomic, and time is Redis's own clock.

Keys (under the configured prefix): ``rl:<scope>:r:<minute>`` / ``rl:<scope>:t:<minute>``
(request and token counts per minute), ``par:<scope>`` (requests in flight, a sorted set by
expiry), ``spent:<scope>:<period>`` (money in 1e-10 USD units), ``resv:<scope>:<period>`` and
``resvx:<scope>:<period>`` (reservations and their expiry), ``end:<request id>`` (a request
already settled or released, for two minutes). Reservations and parallel slots
expire after ``reservation_ttl`` seconds, so a replica that dies mid-request cannot hold them
forever. Budgets are exact below 900,000 USD per period (Lua numbers are doubles).
Redis Cluster is not supported: the scripts build their key names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from redis.asyncio import Redis

from gateway.limits.base import (
    WINDOW,
    Admission,
    ScopeLimits,
    SeedSpend,
    budget_error,
    budget_period,
    rate_error,
    reset_text,
    to_units,
    to_usd,
)
from gateway.redis_client import connect

_ADMIT = """
local prefix, rid = ARGV[1], ARGV[2]
local tokens, ask = tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl, n = tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = math.floor(now / 60)
local frac = (now % 60) / 60
local function count(base)
  local prev = tonumber(redis.call('GET', base .. (window - 1)) or '0')
  local cur = tonumber(redis.call('GET', base .. window) or '0')
  return prev * (1 - frac) + cur, prev, cur
end
local function reserved(scope, period)
  local rkey = prefix .. 'resv:' .. scope .. ':' .. period
  local xkey = prefix .. 'resvx:' .. scope .. ':' .. period
  local expired = redis.call('ZRANGEBYSCORE', xkey, '-inf', now)
  for _, id in ipairs(expired) do redis.call('HDEL', rkey, id) end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', xkey, '-inf', now) end
  local sum = 0
  for _, v in ipairs(redis.call('HVALS', rkey)) do sum = sum + tonumber(v) end
  return sum
end
local seen = {}
for i = 0, n - 1 do
  local b = 7 + i * 6
  local scope, rpm, tpm = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local par, budget, period = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), ARGV[b + 5]
  local r, rp, rc = count(prefix .. 'rl:' .. scope .. ':r:')
  local k, kp, kc = count(prefix .. 'rl:' .. scope .. ':t:')
  if rpm >= 0 and r + 1 > rpm then
    return {1, i, tostring(r), tostring(rp), tostring(rc), tostring(now)}
  end
  if tpm >= 0 and k + tokens > tpm then
    return {2, i, tostring(k), tostring(kp), tostring(kc), tostring(now)}
  end
  if par >= 0 then
    local pkey = prefix .. 'par:' .. scope
    redis.call('ZREMRANGEBYSCORE', pkey, '-inf', now)
    if redis.call('ZCARD', pkey) >= par then return {3, i} end
  end
  if budget >= 0 then
    local spent = redis.call('GET', prefix .. 'spent:' .. scope .. ':' .. period)
    if not spent then return {5, i} end
    local resv = reserved(scope, period)
    if tonumber(spent) + resv + ask > budget then
      return {4, i, spent, tostring(resv)}
    end
  end
  seen[#seen + 1] = tostring(r)
  seen[#seen + 1] = tostring(k)
end
for i = 0, n - 1 do
  local b = 7 + i * 6
  local scope, rpm, tpm = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local par, budget, period = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), ARGV[b + 5]
  if rpm >= 0 then
    local key = prefix .. 'rl:' .. scope .. ':r:' .. window
    redis.call('INCR', key)
    redis.call('EXPIRE', key, 150)
  end
  if tpm >= 0 then
    local key = prefix .. 'rl:' .. scope .. ':t:' .. window
    redis.call('INCRBY', key, tokens)
    redis.call('EXPIRE', key, 150)
  end
  if par >= 0 then
    local pkey = prefix .. 'par:' .. scope
    redis.call('ZADD', pkey, now + ttl, rid)
    redis.call('EXPIRE', pkey, ttl * 2)
  end
  if budget >= 0 then
    local rkey = prefix .. 'resv:' .. scope .. ':' .. period
    local xkey = prefix .. 'resvx:' .. scope .. ':' .. period
    redis.call('HSET', rkey, rid, ask)
    redis.call('ZADD', xkey, now + ttl, rid)
    redis.call('EXPIRE', rkey, ttl * 2)
    redis.call('EXPIRE', xkey, ttl * 2)
  end
end
local out = {0, window, tostring(now)}
for _, v in ipairs(seen) do out[#out + 1] = v end
return out
"""

_END = """
local prefix, rid, window = ARGV[1], ARGV[2], ARGV[3]
local delta, n = tonumber(ARGV[4]), tonumber(ARGV[5])
-- Once per request: a settle retried after its answer was lost must not count twice.
local once = tonumber(ARGV[6 + n * 5])
if not redis.call('SET', prefix .. 'end:' .. rid, '1', 'NX', 'EX', once) then return 0 end
for i = 0, n - 1 do
  local b = 6 + i * 5
  local scope, tpm, par, period, units = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  if tpm == '1' and delta ~= 0 then
    local key = prefix .. 'rl:' .. scope .. ':t:' .. window
    if redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, delta) end
  end
  if par == '1' then redis.call('ZREM', prefix .. 'par:' .. scope, rid) end
  if period ~= '' then
    redis.call('HDEL', prefix .. 'resv:' .. scope .. ':' .. period, rid)
    redis.call('ZREM', prefix .. 'resvx:' .. scope .. ':' .. period, rid)
    local spent = prefix .. 'spent:' .. scope .. ':' .. period
    -- No counter (never seeded, or gone): the ledger's record seeds it, this spend included.
    if tonumber(units) > 0 and redis.call('EXISTS', spent) == 1 then
      redis.call('INCRBY', spent, units)
    end
  end
end
return 1
"""

# How long a finished request's mark lives: a settle retried within it (its first answer lost
# in a broken connection) is not counted twice.
_END_MARK_SECONDS = 120
_PERIOD_TTL = {"daily": 3 * 86400, "weekly": 10 * 86400, "monthly": 40 * 86400}


class RedisLimits:
    """Limits and budgets shared across replicas through one Redis."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "llm-gateway:",
        reservation_ttl: float = 900.0,
        seed: SeedSpend | None = None,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.reservation_ttl = reservation_ttl
        self.seed = seed
        self._admit = redis.register_script(_ADMIT)
        self._end = redis.register_script(_END)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "llm-gateway:", seed: SeedSpend | None = None
    ) -> RedisLimits:
        return cls(
            connect(url),
            prefix=prefix,
            seed=seed,
        )

    async def admit(
        self, request_id: str, scopes: tuple[ScopeLimits, ...], *, tokens: int, cost: Decimal
    ) -> Admission:
        now_dt = datetime.now(UTC)
        periods = {
            s.scope: budget_period(s.budget_period, now_dt)[0]
            for s in scopes
            if s.budget_usd is not None
        }
        ask = to_units(cost)
        args: list[str | int] = [
            self.prefix,
            request_id,
            tokens,
            ask,
            int(self.reservation_ttl),
            len(scopes),
        ]
        for s in scopes:
            args += [
                s.scope,
                _or_minus(s.rpm),
                _or_minus(s.tpm),
                _or_minus(s.max_parallel),
                -1 if s.budget_usd is None else to_units(s.budget_usd),
                periods.get(s.scope, ""),
            ]
        for _ in range(3):
            result = await self._admit(args=args)
            status = int(result[0])
            if status != 5:
                break
            scope = scopes[int(result[1])]
            await self._seed(scope, periods[scope.scope])
        return self._answer(result, request_id, scopes, tokens, ask, periods, now_dt)

    def _answer(
        self,
        result: list[bytes | int],
        request_id: str,
        scopes: tuple[ScopeLimits, ...],
        tokens: int,
        ask: int,
        periods: dict[str, str],
        now_dt: datetime,
    ) -> Admission:
        status = int(result[0])
        if status == 0:
            window, now = int(result[1]), float(result[2])
            headers: dict[str, str] = {}
            for i, s in enumerate(scopes):
                used_r, used_t = float(result[3 + 2 * i]), float(result[4 + 2 * i])
                reset = reset_text(WINDOW - (now % WINDOW))
                for kind, limit, used in (
                    ("requests", s.rpm, used_r + 1),
                    ("tokens", s.tpm, used_t + tokens),
                ):
                    if limit is None:
                        continue
                    remaining = max(0, int(limit - used))
                    key = f"x-ratelimit-remaining-{kind}"
                    if key not in headers or int(headers[key]) > remaining:
                        headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                        headers[key] = str(remaining)
                        headers[f"x-ratelimit-reset-{kind}"] = reset
            return Admission(request_id, scopes, tokens, ask, window, periods, headers)
        s = scopes[int(result[1])]
        if status in (1, 2):
            used, prev, cur, now = (float(x) for x in result[2:6])
            limit = s.rpm if status == 1 else s.tpm
            assert limit is not None
            amount = 1 if status == 1 else tokens
            wait = _retry_after(now, limit, amount, prev, cur)
            kind = "requests" if status == 1 else "tokens"
            headers = {
                f"x-ratelimit-limit-{kind}": str(limit),
                f"x-ratelimit-remaining-{kind}": str(max(0, int(limit - used))),
                f"x-ratelimit-reset-{kind}": reset_text(wait),
            }
            what = "requests per minute" if status == 1 else "tokens per minute"
            raise rate_error(s, what, limit, wait, headers)
        if status == 3:
            assert s.max_parallel is not None
            raise rate_error(s, "requests in parallel", s.max_parallel, 1.0, {})
        if status == 4:
            raise budget_error(s, int(result[2]), int(float(result[3])), ask, now_dt)
        raise RuntimeError(f"could not seed the budget of {s.scope}")

    async def _seed(self, scope: ScopeLimits, period: str) -> None:
        amount = await self.seed(scope.scope, period) if self.seed else Decimal(0)
        ttl = _PERIOD_TTL.get(scope.budget_period)
        await self.redis.set(
            f"{self.prefix}spent:{scope.scope}:{period}", to_units(amount), nx=True, ex=ttl
        )

    async def settle(self, admission: Admission, *, tokens: int, cost: Decimal | None) -> None:
        if admission.done:
            return
        admission.done = True
        units = admission.cost_units if cost is None else to_units(cost)
        try:
            await self._finish(admission, tokens - admission.tokens, units)
        except BaseException:
            admission.done = False  # not settled: it may be tried again
            raise

    async def release(self, admission: Admission) -> None:
        if admission.done:
            return
        admission.done = True
        try:
            await self._finish(admission, -admission.tokens, 0)
        except BaseException:
            admission.done = False
            raise

    async def _finish(self, admission: Admission, delta: int, units: int) -> None:
        args: list[str | int] = [
            self.prefix,
            admission.request_id,
            admission.window,
            delta,
            len(admission.scopes),
        ]
        for s in admission.scopes:
            args += [
                s.scope,
                "1" if s.tpm is not None else "0",
                "1" if s.max_parallel is not None else "0",
                admission.periods.get(s.scope, ""),
                units,
            ]
        args.append(_END_MARK_SECONDS)
        await self._end(args=args)

    async def spent(self, scope: ScopeLimits) -> Decimal:
        period = budget_period(scope.budget_period, datetime.now(UTC))[0]
        key = f"{self.prefix}spent:{scope.scope}:{period}"
        value = await self.redis.get(key)
        if value is None:
            await self._seed(scope, period)
            value = await self.redis.get(key)
        return to_usd(int(value or 0))

    async def aclose(self) -> None:
        await self.redis.aclose(close_connection_pool=True)  # the pool is its own


def _or_minus(value: int | None) -> int:
    return -1 if value is None else value


def _retry_after(now: float, limit: int, amount: int, previous: float, current: float) -> float:
    elapsed = (now % WINDOW) / WINDOW
    if current + amount > limit or previous == 0:
        return WINDOW - (now % WINDOW)
    needed = 1 - (limit - current - amount) / previous
    return max(0.0, (needed - elapsed) * WINDOW)
