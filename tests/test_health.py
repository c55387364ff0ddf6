"""The circuit breaker, quotas and Retry-After parsing, on a controlled clock."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from gateway.config import CircuitConfig, load_config
from gateway.errors import InvalidRequestError, RateLimitError, UpstreamError, retry_after_seconds
from gateway.routing import HealthBoard, Router
from providers.base import Deployment


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def board(clock: Clock, **circuit: float) -> HealthBoard:
    settings = {"consecutive_failures": 3, "cooldown": 10.0, "min_requests": 10, **circuit}
    return HealthBoard(CircuitConfig.model_validate(settings), clock=clock)


def deployment(rpm: int | None = None, tpm: int | None = None) -> Deployment:
    router = Router(
        load_config(
            {
                "providers": {"p": {"type": "mock"}},
                "models": {"m": {"deployments": [{"provider": "p", "model": "x"}]}},
            }
        )
    )
    dep = router.deployments["m"][0]
    dep.rpm, dep.tpm = rpm, tpm
    return dep


BOOM = UpstreamError("boom", status=503)


async def fail(hb: HealthBoard, dep: Deployment, error: Exception = BOOM) -> None:
    ticket = await hb.admit(dep)
    assert ticket is not None
    hb.finish(ticket, error)  # type: ignore[arg-type]


async def test_circuit_opens_after_consecutive_failures(clock):
    hb, dep = board(clock), deployment()
    for _ in range(3):
        await fail(hb, dep)
    assert await hb.admit(dep) is None
    assert "circuit open" in (hb.unavailable(dep) or "")


async def test_success_resets_the_consecutive_count(clock):
    hb, dep = board(clock), deployment()
    await fail(hb, dep)
    await fail(hb, dep)
    ok = await hb.admit(dep)
    assert ok is not None
    hb.finish(ok)
    await fail(hb, dep)
    await fail(hb, dep)
    assert hb.unavailable(dep) is None


async def test_request_errors_do_not_count_against_the_deployment(clock):
    hb, dep = board(clock), deployment()
    for _ in range(5):
        await fail(hb, dep, InvalidRequestError("bad"))
    assert hb.unavailable(dep) is None


async def test_error_ratio_opens_the_circuit_once_enough_requests_were_seen(clock):
    hb = board(clock, consecutive_failures=100, error_ratio=0.5, min_requests=10)
    dep = deployment()
    for i in range(10):
        ticket = await hb.admit(dep)
        assert ticket is not None
        hb.finish(ticket, BOOM if i % 2 else None)
    assert hb.unavailable(dep) is not None


async def test_after_cooldown_exactly_one_probe_is_let_through(clock):
    hb, dep = board(clock), deployment()
    for _ in range(3):
        await fail(hb, dep)
    clock.now += 10.5
    probe = await hb.admit(dep)
    assert probe is not None and probe.probe
    assert await hb.admit(dep) is None  # others wait for the probe's outcome
    hb.finish(probe)
    assert hb.get(dep.id).state == "closed"
    assert await hb.admit(dep) is not None


async def test_failed_probe_reopens_for_another_cooldown(clock):
    hb, dep = board(clock), deployment()
    for _ in range(3):
        await fail(hb, dep)
    clock.now += 10.5
    await fail(hb, dep)  # the probe
    assert hb.get(dep.id).state == "open"
    clock.now += 9.0
    assert await hb.admit(dep) is None
    clock.now += 1.5
    assert await hb.admit(dep) is not None


async def test_429_opens_for_as_long_as_retry_after_says(clock):
    hb, dep = board(clock), deployment()
    await fail(hb, dep, RateLimitError("slow down", headers={"retry-after": "4"}))
    assert await hb.admit(dep) is None
    clock.now += 4.1
    assert await hb.admit(dep) is not None


async def test_rpm_quota_skips_the_deployment_until_the_minute_rolls(clock):
    hb, dep = board(clock), deployment(rpm=2)
    for _ in range(2):
        ticket = await hb.admit(dep)
        assert ticket is not None
        hb.finish(ticket)
    assert "2 requests per minute" in (hb.unavailable(dep) or "")
    clock.now += 60
    assert hb.unavailable(dep) is None


async def test_tpm_quota_counts_estimates_then_real_usage(clock):
    hb, dep = board(clock), deployment(tpm=1000)
    ticket = await hb.admit(dep, tokens=600)
    assert ticket is not None
    hb.finish(ticket, tokens=900)
    assert hb.unavailable(dep, tokens=200) is not None  # 900 + 200 > 1000
    assert hb.unavailable(dep, tokens=50) is None


def test_in_flight_counts_admitted_attempts_until_they_finish(clock):
    import asyncio

    async def run() -> None:
        hb, dep = board(clock), deployment()
        t1, t2 = await hb.admit(dep), await hb.admit(dep)
        assert hb.get(dep.id).in_flight == 2
        assert t1 is not None and t2 is not None
        hb.finish(t1)
        hb.finish(t2)
        assert hb.get(dep.id).in_flight == 0

    asyncio.run(run())


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "600"}, 0.6),
        ({"x-ms-retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "600", "retry-after": "9"}, 0.6),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_forms(headers, expected):
    assert retry_after_seconds(RateLimitError("x", headers=headers)) == expected


def test_retry_after_as_http_date():
    later = formatdate(time.time() + 30, usegmt=True)
    wait = retry_after_seconds(RateLimitError("x", headers={"retry-after": later}))
    assert wait is not None and 28 <= wait <= 30
