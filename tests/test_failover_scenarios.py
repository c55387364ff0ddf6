"""The failoverbench fault classes, one test each, under its methodology's settings scaled
down in time: two retries (three attempts per deployment), one fallback model, and a
timeout ``T`` standing for its 30 s (first output within ``T / 2``, as the gateway's own
10 s default does).

Each test states what the caller got, how long it took, and how many requests the
fault-injecting upstream saw, through the HTTP proxy and the in-process library. Prefill
(continuation) support is declared in config: per deployment, or per provider
(``faulty-vllm``), as for an OpenAI-compatible server such as vLLM.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

import gateway
from gateway.config import load_config
from gateway.errors import RequestTimeoutError
from gateway.resilience import Attempts, run_plan
from gateway.routing import HealthBoard, Router
from gateway.setup import Setup
from tests.conftest import GatewayFactory
from tests.emulators.faulty import Call, FaultyUpstream, completion
from tests.resilience_helpers import (
    PROMPT,
    Answer,
    LibraryCaller,
    ProxyCaller,
    Side,
    counts,
    watchdog,
)

FULL = f"ok: {PROMPT}"
T = 1.0  # stands for the methodology's 30 s timeout
ROUTING: dict[str, Any] = {
    "retries": {
        "attempts_per_deployment": 3,  # two retries
        "attempts_per_request": 6,
        "initial_backoff": 0.05,
        "max_backoff": 0.2,
    },
    "timeouts": {"connect": T, "idle": T, "first_token": T / 2, "total": 10},
    "circuit": {"cooldown": T},
}
PREFILL = {"assistant_prefill": True}


def build_models(side: str) -> dict[str, Any]:
    """Public models named for their scenario; upstream names are ``<fault>#<model>.<side>``."""
    models: dict[str, Any] = {}

    def deployment(fault: str, name: str, **options: Any) -> dict[str, Any]:
        return {"provider": "faulty", "model": f"{fault}#{name}.{side}", **options}

    def add(name: str, fault: str, *, fallback: str | None = "ok", **options: Any) -> None:
        entry: dict[str, Any] = {"deployments": [deployment(fault, name)], **options}
        if fallback is not None and "fallbacks" not in options:
            models[f"{name}.fb"] = {"deployments": [deployment(fallback, f"{name}.fb")]}
            entry["fallbacks"] = [f"{name}.fb"]
        models[name] = entry

    add("healthy", "ok", fallback=None)
    add("s01", "429-once-retry-after:0.4")
    add("s02", "429-always")
    add("s03", "500-once")
    add("s04", "503-always")
    add("s05", "reset-once")
    add("s06", "hang")
    add("s07", "slow-first-token:3")
    add("s07-headers", "slow-first-byte:3", timeouts={"first_token": T / 2, "idle": 3})
    # Stream cut after output: continued on a fallback that declares prefill support.
    add("s08", "cut-after:3", fallbacks=["s08.fb"])
    models["s08.fb"] = {"deployments": [deployment("prefill", "s08.fb", capabilities=PREFILL)]}
    add("s08-echo", "cut-after:3", fallbacks=["s08-echo.fb"])
    models["s08-echo.fb"] = {
        "deployments": [deployment("prefill-echo", "s08-echo.fb", capabilities=PREFILL)]
    }
    add("s08-noprefill", "cut-after:3")
    add("s09", "stall-after:3", fallbacks=["s09.fb"])
    models["s09.fb"] = {
        "deployments": [{"provider": "faulty-vllm", "model": f"prefill#s09.fb.{side}"}]
    }
    add("s10", "malformed-mid-stream")
    add("s11", "no-done")
    models["s12"] = {
        "deployments": [deployment("context-length", "s12", context_window=8000)],
        "fallbacks": ["s12.small", "s12.big"],
    }
    models["s12.small"] = {"deployments": [deployment("ok", "s12.small", context_window=4000)]}
    models["s12.big"] = {"deployments": [deployment("ok", "s12.big", context_window=128000)]}
    add("s13", "content-policy")
    # A fallback that claims prefill support and rejects the prefill all the same.
    add("s14", "cut-after:3", fallbacks=["s14.fb"])
    models["s14.fb"] = {
        "deployments": [deployment("rejects-prefill", "s14.fb", capabilities=PREFILL)]
    }
    add("s14-undeclared", "cut-after:3", fallback="rejects-prefill")
    add("s15", f"down:flap-{side}")
    add("timeout-retried", "hang", retries={"retry_on": ["timeout"]})
    add("no-retries", "500-once", retries={"retry_on": []})
    add("stale", "close-reused-once")
    add("dropped", "drop-after:0.2")
    add("deadline", "stall-after:3", fallbacks=["deadline.fb"], timeouts={"idle": 3})
    models["deadline.fb"] = {
        "deployments": [deployment("prefill", "deadline.fb", capabilities=PREFILL)]
    }
    return models


def gateway_config(side: str, up: FaultyUpstream) -> dict[str, Any]:
    faulty = {"type": "openai", "api_key": "x", "base_url": up.url + "/v1", "timeouts": {"read": T}}
    return {
        "routing": ROUTING,
        "providers": {"faulty": faulty, "faulty-vllm": {**faulty, "capabilities": PREFILL}},
        "models": build_models(side),
    }


@pytest.fixture(scope="module")
def up() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def sides(up: FaultyUpstream, start_gateway: GatewayFactory) -> Iterator[dict[str, Side]]:
    with ExitStack() as stack:
        library_config = gateway_config("library", up)
        gw = stack.enter_context(gateway.Gateway(library_config))
        proxy_config = gateway_config("proxy", up)
        yield {
            "proxy": Side(ProxyCaller(start_gateway(proxy_config)), proxy_config["models"], up),
            "library": Side(LibraryCaller(gw), library_config["models"], up),
        }


@pytest.fixture(params=["proxy", "library"])
def side(request: pytest.FixtureRequest, sides: dict[str, Side]) -> Iterator[Side]:
    """One side; the test must end within 20 s and leave its gateway able to answer."""
    chosen = sides[request.param]
    with watchdog(20):
        yield chosen
    after = chosen.chat("healthy", stream=True)
    assert after.ok and after.text == FULL, after.error


def answered_by(side: Side, answer: Answer, model: str) -> None:
    """The caller got the complete answer, reported as ``model``'s, with its usage."""
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert answer.finish_reason == "stop"
    assert answer.model == side.upstream(model)
    if answer.done is not None:
        assert answer.done


def cut_short(answer: Answer, code: str) -> None:
    """What the caller was sent of ``cut-after:3``, then an error event and no ``[DONE]``."""
    assert answer.text in ("ok: hello", "ok:"), answer.text
    assert answer.error is not None, "a partial answer was presented as complete"
    assert answer.error.code == code
    assert answer.finish_reason is None
    if answer.done is not None:
        assert answer.done is False


USAGE = {"stream_options": {"include_usage": True}}


# --- S01-S05: error statuses and broken connections ----------------------------------------


def test_s01_429_with_retry_after_is_retried_after_the_pause(side: Side) -> None:
    answer = side.chat("s01", stream=True)
    answered_by(side, answer, "s01")
    assert answer.attempts == 2
    [gap] = side.gaps("s01")
    assert 0.38 <= gap < 1.5
    assert side.attempts("s01.fb") == []


def test_s02_persistent_429_backs_off_then_fails_over(side: Side) -> None:
    answer = side.chat("s02", stream=True)
    answered_by(side, answer, "s02.fb")
    assert len(side.attempts("s02")) == 3
    assert all(gap > 0 for gap in side.gaps("s02"))
    assert (answer.attempts, answer.fallback_used) == (4, True)
    assert answer.seconds < 2.0


def test_s03_500_once_is_retried_on_the_same_deployment(side: Side) -> None:
    answer = side.chat("s03", stream=True)
    answered_by(side, answer, "s03")
    assert (len(side.attempts("s03")), len(side.attempts("s03.fb"))) == (2, 0)
    assert answer.attempts == 2


def test_s04_s16_persistent_503_fails_over_and_reports_the_fallback(side: Side) -> None:
    answer = side.chat("s04", stream=True, **USAGE)
    answered_by(side, answer, "s04.fb")
    assert len(side.attempts("s04")) == 3
    [seen] = side.attempts("s04.fb")
    assert answer.usage == counts(completion(Call(seen.model, "", seen.body, 1))["usage"])
    assert (answer.attempts, answer.fallback_used) == (4, True)
    assert answer.seconds < 2.0


def test_s05_reset_before_headers_is_retried(side: Side) -> None:
    answer = side.chat("s05", stream=True)
    answered_by(side, answer, "s05")
    assert len(side.attempts("s05")) == answer.attempts == 2


# --- S06-S07: silence ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_s06_silent_route_is_rescued_by_the_fallback_within_one_timeout(
    side: Side, stream: bool
) -> None:
    side.up.reset()
    answer = side.chat("s06", stream=stream)
    answered_by(side, answer, "s06.fb")
    assert len(side.attempts("s06")) == 1  # not retried: it would only multiply the wait
    assert answer.attempts == 2
    assert T / 2 <= answer.seconds < T + 0.3


def test_s06_a_model_may_retry_timeouts(side: Side) -> None:
    answer = side.chat("timeout-retried", stream=True)
    answered_by(side, answer, "timeout-retried.fb")
    assert len(side.attempts("timeout-retried")) == 3
    assert answer.seconds >= 3 * T / 2


def test_a_model_without_retries_fails_over_on_the_first_500(side: Side) -> None:
    answer = side.chat("no-retries", stream=True)
    answered_by(side, answer, "no-retries.fb")
    assert len(side.attempts("no-retries")) == 1


def test_s07_slow_first_token_fails_over_within_the_first_token_limit(side: Side) -> None:
    answer = side.chat("s07", stream=True)
    answered_by(side, answer, "s07.fb")
    assert len(side.attempts("s07")) == 1
    assert answer.seconds < T  # before the idle timeout could have fired


def test_s07_first_token_limit_covers_the_wait_for_headers(side: Side) -> None:
    """No headers for 3 s and an idle limit of 3 s: the 0.3 s first-token limit decides."""
    answer = side.chat("s07-headers", stream=True)
    answered_by(side, answer, "s07-headers.fb")
    assert len(side.attempts("s07-headers")) == 1
    assert answer.seconds < T


# --- S08-S11, S14: streams -----------------------------------------------------------------


def test_s08_cut_stream_is_continued_on_a_prefill_capable_fallback(side: Side) -> None:
    answer = side.chat("s08", stream=True)
    assert answer.ok, answer.error
    assert answer.text == FULL  # nothing the caller had is repeated
    assert answer.finish_reason == "stop"
    assert len(answer.ids) == 1
    [seen] = side.attempts("s08.fb")
    prefix = seen.body["messages"][-1]
    assert prefix["role"] == "assistant" and "prefix" not in prefix
    assert answer.text.startswith(prefix["content"]) and prefix["content"]
    assert seen.body["continue_final_message"] is True
    assert seen.body["add_generation_prompt"] is False
    assert len(side.attempts("s08")) == 1
    if side.name == "library":
        assert answer.continued is True
    else:
        assert answer.done is True


def test_s08_continuation_that_repeats_the_prefill_is_not_repeated_to_the_caller(
    side: Side,
) -> None:
    answer = side.chat("s08-echo", stream=True)
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert len(side.attempts("s08-echo.fb")) == 1


def test_s08_cut_stream_without_a_prefill_fallback_ends_with_an_error_event(side: Side) -> None:
    answer = side.chat("s08-noprefill", stream=True)
    cut_short(answer, "stream_interrupted")
    assert side.attempts("s08-noprefill.fb") == []


def test_s09_stalled_stream_is_continued_after_the_idle_timeout(side: Side) -> None:
    answer = side.chat("s09", stream=True)
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert T <= answer.seconds < 2 * T + 0.3
    assert len(side.attempts("s09")) == len(side.attempts("s09.fb")) == 1


def test_s10_malformed_chunk_is_skipped(side: Side) -> None:
    answer = side.chat("s10", stream=True)
    answered_by(side, answer, "s10")
    assert len(side.attempts("s10")) == 1
    if side.name == "library":
        assert answer.malformed_events == 1


def test_s11_stream_without_done_ends_promptly_with_usage(side: Side) -> None:
    answer = side.chat("s11", stream=True, **USAGE)
    answered_by(side, answer, "s11")
    assert answer.usage is not None
    assert answer.seconds < T / 2
    assert len(side.attempts("s11")) == 1


def test_s14_fallback_that_rejects_the_prefill_does_not_mask_the_cut(side: Side) -> None:
    answer = side.chat("s14", stream=True)
    cut_short(answer, "stream_interrupted")
    assert answer.error is not None
    assert "prefill" not in answer.error.message
    [rejected] = side.attempts("s14.fb")  # asked once, said 400: not a success
    assert rejected.body["messages"][-1]["role"] == "assistant"
    assert answer.deployment == f"faulty/{side.upstream('s14')}"
    if side.name == "library":  # the proxy's headers went out before the continuation
        assert answer.attempts == 2
        assert answer.continued is False


def test_s14_fallback_without_declared_prefill_is_not_asked_to_continue(side: Side) -> None:
    answer = side.chat("s14-undeclared", stream=True)
    cut_short(answer, "stream_interrupted")
    assert side.attempts("s14-undeclared.fb") == []


# --- S12-S13: errors about the request -----------------------------------------------------


def test_s12_context_length_tries_the_larger_context_fallback(side: Side) -> None:
    answer = side.chat("s12", stream=True)
    answered_by(side, answer, "s12.big")
    assert len(side.attempts("s12")) == 1
    assert side.attempts("s12.small") == []  # a smaller window cannot help
    assert answer.attempts == 2


def test_s13_content_filter_is_not_retried_and_keeps_the_reason(side: Side) -> None:
    answer = side.chat("s13", stream=True)
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (400, "content_filter")
    assert "safety system" in answer.error.message
    assert len(side.attempts("s13")) == 1
    assert side.attempts("s13.fb") == []


# --- S15: flapping upstream ----------------------------------------------------------------


def test_s15_flapping_primary_is_served_by_the_fallback_and_recovers(side: Side) -> None:
    flap = f"flap-{side.name}"
    side.up.set_down(flap)
    answers: list[Answer] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2 * T:
            answers.append(side.chat("s15", stream=True))
            time.sleep(0.05)
        during = len(side.attempts("s15"))
    finally:
        side.up.set_down(flap, False)
    recovered_at = time.monotonic()
    for answer in answers:
        assert answer.ok, answer.error
        assert answer.model == side.upstream("s15.fb")
    # Five failures open the circuit; then about one probe per cooldown reaches the primary.
    assert during <= 5 + 3
    assert len(answers) >= 6
    while True:
        answer = side.chat("s15", stream=True)
        assert answer.ok, answer.error
        if answer.model == side.upstream("s15"):
            break
        assert time.monotonic() - recovered_at < T + 0.5, "primary not used again in time"
        time.sleep(0.05)


# --- no hidden attempts, and the caller's patience ------------------------------------------


def test_a_stale_pooled_connection_is_resent_and_counted(side: Side) -> None:
    side.chat("healthy")  # a connection to the upstream now waits in the pool
    answer = side.chat("stale")
    answered_by(side, answer, "stale")
    assert len(side.attempts("stale")) == answer.attempts == 2


def test_a_dropped_request_is_resent_only_as_a_counted_attempt(side: Side) -> None:
    """Each drop comes 0.2 s after the request, on a pooled connection: never resent by the
    transport, so the upstream sees exactly the attempts the gateway reports."""
    side.chat("healthy")
    answer = side.chat("dropped")
    answered_by(side, answer, "dropped.fb")
    assert len(side.attempts("dropped")) == 3
    assert answer.attempts == 4
    if isinstance(side.caller, ProxyCaller):  # and the metrics count the same three
        metrics = httpx.get(side.caller.base_url.removesuffix("/v1") + "/metrics").text
        dep = f"faulty/{side.upstream('dropped')}"
        counted = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("gateway_upstream_attempts_total{") and f'deployment="{dep}"' in line
        ]
        assert sum(counted) == 3


def test_no_attempt_starts_after_the_callers_deadline(side: Side) -> None:
    """The stream stalls after output; the caller's own 0.5 s runs out before the idle limit
    (3 s), so the answer is not continued elsewhere."""
    answer = side.chat("deadline", stream=True, timeout=0.5)
    cut_short(answer, "request_timeout")
    assert answer.seconds < 1.5
    assert side.attempts("deadline.fb") == []


def test_run_plan_starts_no_attempt_once_the_deadline_has_passed() -> None:
    config = load_config(
        {
            "providers": {
                "p": {"type": "openai", "api_key": "x", "base_url": "http://127.0.0.1:9"}
            },
            "models": {"m": {"deployments": [{"provider": "p", "model": "m"}]}},
        }
    )
    router = Router(config)
    started: list[str] = []

    async def attempt(dep: Any, ticket: Any) -> str:
        started.append(dep.id)
        return "answer"

    async def run() -> None:
        with pytest.raises(RequestTimeoutError):
            await run_plan(
                router.plan("m"), attempt, Attempts(), router.health, deadline=time.monotonic()
            )

    asyncio.run(run())
    assert started == []


# --- the policies' defaults -----------------------------------------------------------------


def catalog_router(models: dict[str, Any]) -> Router:
    config = load_config(
        {"providers": {"openai": {"type": "openai", "api_key": "x"}}, "models": models}
    )
    return Setup.build(config, HealthBoard(config.routing.circuit), None).router


def openai_model(name: str, **options: Any) -> dict[str, Any]:
    return {"deployments": [{"provider": "openai", "model": name}], **options}


def test_context_window_fallbacks_default_to_larger_catalog_windows() -> None:
    router = catalog_router(
        {
            "gpt-4o": openai_model("gpt-4o", fallbacks=["gpt-4o-mini", "gpt-4.1"]),
            "gpt-4o-mini": openai_model("gpt-4o-mini"),  # 128k, as gpt-4o: no help
            "gpt-4.1": openai_model("gpt-4.1"),  # ~1M
        }
    )
    plan = router.plan("gpt-4o")
    assert [d.public_model for d in plan.context_attempts] == ["gpt-4.1"]
    # A per-request chain is the one looked at: without gpt-4.1 in it, nothing fits.
    assert router.plan("gpt-4o", fallbacks=["gpt-4o-mini"]).context_attempts == []


def test_configured_context_window_fallbacks_are_kept() -> None:
    router = catalog_router(
        {
            "gpt-4o": openai_model(
                "gpt-4o", fallbacks=["gpt-4.1"], context_window_fallbacks=["gpt-4o-mini"]
            ),
            "gpt-4o-mini": openai_model("gpt-4o-mini"),
            "gpt-4.1": openai_model("gpt-4.1"),
        }
    )
    assert [d.public_model for d in router.plan("gpt-4o").context_attempts] == ["gpt-4o-mini"]


def test_stream_first_token_defaults_to_10s_unless_it_is_the_last_deployment() -> None:
    router = catalog_router(
        {
            "a": openai_model("gpt-4o", fallbacks=["b"]),
            "b": openai_model("gpt-4.1", timeouts={"first_token": 30}),
        }
    )
    [first, last] = router.plan("a").attempts
    policy = router.plan("a").policy
    assert policy.first_token(first) == 10.0
    assert policy.first_token(last, last=True) == 120.0  # the provider's read timeout
    assert router.plan("b").policy.first_token(last) == 30.0


def test_retry_on_leaves_timeouts_out_by_default() -> None:
    config = load_config({})
    assert config.routing.retries.retry_on == ["rate_limit", "server_error", "connection"]
