"""The gateway's resilience, fault by fault: for each fault an upstream can throw, what the
caller receives and what the upstream saw (how many attempts, how far apart).

The faults are played by ``FaultyUpstream``, chosen per request by the upstream model name;
every public model below names its scenario and a tag of its own (model and side), so "once"
counters and circuit breakers never leak between tests. Each behaviour is checked through the
HTTP proxy (openai SDK, no SDK retries) and, where it matters, the in-process library.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import openai
import pytest

import gateway
from tests.conftest import GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.faulty import Call, FaultyUpstream, completion
from tests.emulators.mistral_api import API_KEY as MISTRAL_KEY
from tests.emulators.mistral_api import MistralEmulator
from tests.harness import ServerThread
from tests.resilience_helpers import (
    PROMPT,
    Answer,
    LateCutUpstream,
    LibraryCaller,
    ProxyCaller,
    Side,
    counts,
    read_chunk,
    watchdog,
)

FULL = f"ok: {PROMPT}"  # the faulty upstream's normal answer to PROMPT
PARTIAL = "ok: hello"  # what three events of that answer carry (role, "ok:", " hello")
KINDS = {False: "json", True: "stream"}
STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])

# Tight settings so that every wait in this module is short.
ROUTING: dict[str, Any] = {
    "retries": {
        "attempts_per_deployment": 2,
        "attempts_per_request": 5,
        "initial_backoff": 0.05,
        "max_backoff": 0.2,
        "max_retry_after": 5,
    },
    "timeouts": {"first_token": 1.0, "idle": 1.0, "connect": 1.0, "total": 20},
    "circuit": {"consecutive_failures": 3, "cooldown": 1.0, "min_requests": 50},
}
COOLDOWN = ROUTING["circuit"]["cooldown"]
SHORT_WAITS = 10


def variant(name: str, stream: bool) -> str:
    return f"{name}.{KINDS[stream]}"


def build_models(side: str) -> dict[str, Any]:
    """Every public model of one gateway; upstream names are ``<scenario>#<model>.<side>``."""
    models: dict[str, Any] = {}

    def add(name: str, *scenarios: str, fallback: bool = True, **options: Any) -> None:
        tags = [name] if len(scenarios) == 1 else [f"{name}.{i}" for i in range(len(scenarios))]
        entry: dict[str, Any] = {
            "deployments": [
                {"provider": "faulty", "model": f"{s}#{tag}.{side}"}
                for s, tag in zip(scenarios, tags, strict=True)
            ],
            **options,
        }
        if fallback and "fallbacks" not in options:
            add(f"{name}.fb", "ok", fallback=False)
            entry["fallbacks"] = [f"{name}.fb"]
        models[name] = entry

    def mistral(name: str, provider: str, upstream: str) -> None:
        models[name] = {"deployments": [{"provider": provider, "model": upstream}]}

    add("healthy", "ok", fallback=False)
    add("429-once", "429-once-retry-after:2")
    add("429-long", "429-once-retry-after:30")
    for i in range(SHORT_WAITS):
        add(f"429-short.{i}", "429-once-retry-after:0.02549")
    add("429-nofb", "429-always", fallbacks=[])
    for how in ("header", "body"):
        add(f"429-reqnofb.{how}", "429-always")
    add("hang-nofb", "hang", fallback=False)
    add("hang-long", "hang", fallback=False, timeouts={"first_token": 30, "idle": 30})
    add("slow-first-byte", "slow-first-byte:3")
    add("slow-first-token", "slow-first-token:3")
    for scenario in ("cut-after:3", "stall-after:3", "malformed-mid-stream", "no-done"):
        add(scenario.partition(":")[0], scenario)
    add("no-finish", "no-finish")
    add("ctx-nocwf", "context-length")
    add("content-filter-openai", "content-filter")
    models["content-filter-azure"] = {
        "deployments": [{"provider": "faulty-azure", "deployment": f"content-filter#azure.{side}"}]
    }
    add("circuit", "down:outage-" + side)
    add("503-many", "503-always", "503-always", "503-always", fallbacks=["503-many.fb1"])
    add("503-many.fb1", "503-always", fallbacks=["503-many.fb2"])
    add("503-many.fb2", "503-always", fallback=False)
    for stream in (False, True):
        add(variant("429-always", stream), "429-always")
        add(variant("429-ms", stream), "429-retry-after-ms:600")
        add(variant("quota", stream), "insufficient-quota")
        add(variant("500-once", stream), "500-once")
        add(variant("503", stream), "503-always")
        add(variant("reset-once", stream), "reset-once")
        add(variant("reset", stream), "reset")
        add(variant("hang", stream), "hang")
        ctx = variant("ctx", stream)
        add(f"{ctx}.big", "ok", fallback=False)
        add(ctx, "context-length", context_window_fallbacks=[f"{ctx}.big"])
        add(variant("content-filter", stream), "content-filter")
    mistral("mistral", "mistral", "mistral-small-latest")
    mistral("mistral-badkey", "mistral-badkey", "mistral-small-latest")
    mistral("mistral-flaky", "mistral", "mistral-medium-latest")
    add("cut-kind", "cut-after:3", fallback=False)
    add("cut-sdk", "cut-after:3", fallback=False)
    add("cut-cont", "cut-after:3", fallbacks=["cut-cont.fb", "mistral"])
    add("cut-cont.fb", "ok", fallback=False)  # tried first, and unable to continue a stream
    add("cut-cont-badkey", "cut-after:3", fallbacks=["mistral-badkey"])
    add("cut-cont-500", "cut-after:3", fallbacks=["mistral-flaky"])
    return models


def gateway_config(
    side: str, up: FaultyUpstream, mistral: MistralEmulator, **routing: Any
) -> dict[str, Any]:
    return {
        "routing": {**ROUTING, **routing},
        "providers": {
            "faulty": {"type": "openai", "api_key": "x", "base_url": up.url + "/v1"},
            # Azure's v1 style sends the deployment name as the model, so the scenario plays.
            "faulty-azure": {
                "type": "azure",
                "api_key": "x",
                "endpoint": up.url,
                "api_style": "v1",
            },
            "mistral": {"type": "mistral", "api_key": MISTRAL_KEY, "base_url": mistral.url + "/v1"},
            "mistral-badkey": {
                "type": "mistral",
                "api_key": "not-the-key",
                "base_url": mistral.url + "/v1",
            },
        },
        "models": build_models(side),
    }


# --- fixtures ------------------------------------------------------------------------------

SIDES: list[Side] = []  # every side started in this module, for the health check after a test


@pytest.fixture(scope="module")
def up() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def mistral_upstream() -> Iterator[MistralEmulator]:
    emulator = MistralEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def mistral(mistral_upstream: MistralEmulator) -> Iterator[MistralEmulator]:
    """The Mistral emulator with no recorded requests and no queued faults."""
    mistral_upstream.reset()
    yield mistral_upstream
    mistral_upstream.reset()


def proxy_side(
    start_gateway: GatewayFactory, config: dict[str, Any], up: FaultyUpstream, name: str
) -> Side:
    caller = ProxyCaller(start_gateway(config))
    caller.side = name
    side = Side(caller, config["models"], up)
    SIDES.append(side)
    return side


@pytest.fixture(scope="module")
def sides(
    up: FaultyUpstream, mistral_upstream: MistralEmulator, start_gateway: GatewayFactory
) -> Iterator[dict[str, Side]]:
    """The proxy and the library, each on its own gateway (own circuits), same upstreams."""
    with ExitStack() as stack:
        proxy_config = gateway_config("proxy", up, mistral_upstream)
        library_config = gateway_config("library", up, mistral_upstream)
        gw = stack.enter_context(gateway.Gateway(library_config))
        library = Side(LibraryCaller(gw), library_config["models"], up)
        SIDES.append(library)
        yield {
            "proxy": proxy_side(start_gateway, proxy_config, up, "proxy"),
            "library": library,
        }
        SIDES.clear()


@pytest.fixture(params=["proxy", "library"])
def side(request: pytest.FixtureRequest, sides: dict[str, Side]) -> Side:
    return sides[request.param]


@pytest.fixture(scope="module")
def content_filter_sides(
    up: FaultyUpstream, mistral_upstream: MistralEmulator, start_gateway: GatewayFactory
) -> Iterator[dict[str, Side]]:
    """Gateways with ``routing.fallback_on_content_filter: true``."""
    with ExitStack() as stack:
        library_config = gateway_config(
            "library-cf", up, mistral_upstream, fallback_on_content_filter=True
        )
        gw = stack.enter_context(gateway.Gateway(library_config))
        library = Side(LibraryCaller(gw), library_config["models"], up)
        SIDES.append(library)
        proxy_config = gateway_config(
            "proxy-cf", up, mistral_upstream, fallback_on_content_filter=True
        )
        yield {
            "proxy": proxy_side(start_gateway, proxy_config, up, "proxy"),
            "library": library,
        }


@pytest.fixture(autouse=True)
def bounded_and_healthy_after() -> Iterator[None]:
    """Every test ends within 30 s, and leaves each gateway it used able to answer."""
    before = {id(s): s.caller.calls for s in SIDES}
    with watchdog(30):
        yield
    for s in SIDES:
        if s.caller.calls != before.get(id(s), 0):
            answer = s.chat("healthy")
            assert answer.ok, f"{s.name} gateway unhealthy after the test: {answer.error}"
            assert answer.text == FULL


def assert_fallback_answered(
    side: Side, answer: Answer, fallback: str, *, first_call: bool = True
) -> None:
    """The caller got the fallback's complete answer, and was told it came from there;
    ``first_call``: the fallback's upstream saw this one request."""
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert answer.model == side.upstream(fallback)
    assert answer.fallback_used is True
    assert answer.provider == "faulty"
    assert answer.deployment == f"faulty/{side.upstream(fallback)}"
    if first_call:
        assert len(side.attempts(fallback)) == 1
    if answer.done is not None:
        assert answer.done


def sent_before_cut(text: str) -> bool:
    """Whether ``text`` is what a caller may have of ``cut-after:3``: all of PARTIAL, or (the
    bug that test_events_received_before_a_cut_reach_a_slow_consumer pins down, hit in about
    2% of runs) PARTIAL less its last event."""
    return text in (PARTIAL, PARTIAL.removesuffix(" hello"))


def assert_cut_short(answer: Answer, text: str | None = None) -> None:
    """The caller got ``text`` (default: what ``cut-after:3`` sent) and then an error, never a
    clean end of the answer."""
    if text is None:
        assert sent_before_cut(answer.text), answer.text
    else:
        assert answer.text == text
    assert answer.error is not None, "a partial answer was presented as complete"
    assert answer.finish_reason is None
    if answer.done is not None:
        assert answer.done is False


# --- rate limits ---------------------------------------------------------------------------


def test_retry_waits_for_the_retry_after_header(side: Side) -> None:
    answer = side.chat("429-once")
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert answer.model == side.upstream("429-once")
    assert (answer.attempts, answer.fallback_used) == (2, False)
    assert len(side.attempts("429-once")) == 2
    [gap] = side.gaps("429-once")
    assert 1.9 <= gap < 3.5
    assert side.attempts("429-once.fb") == []


@STREAMS
def test_persistent_429_fails_over_after_attempts_per_deployment(side: Side, stream: bool) -> None:
    name = variant("429-always", stream)
    answer = side.chat(name, stream=stream)
    assert_fallback_answered(side, answer, f"{name}.fb")
    assert answer.attempts == 3
    assert len(side.attempts(name)) == 2
    [gap] = side.gaps(name)
    assert gap < 0.5  # backoff, capped at max_backoff


def test_persistent_429_without_fallbacks_reaches_the_caller(side: Side) -> None:
    answer = side.chat("429-nofb")
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (429, "rate_limit_exceeded")
    expected = openai.RateLimitError if side.name == "proxy" else gateway.RateLimitError
    assert isinstance(answer.error.exception, expected)
    assert len(side.attempts("429-nofb")) == 2
    assert answer.attempts in (2, None)


@pytest.mark.parametrize(
    ("side_name", "how"),
    [("proxy", "header"), ("proxy", "body"), ("library", "body")],
    ids=["proxy-header", "proxy-body", "library-body"],
)
def test_request_without_fallbacks_gets_the_429_after_attempts_per_deployment(
    sides: dict[str, Side], side_name: str, how: str
) -> None:
    side = sides[side_name]
    name = f"429-reqnofb.{how}"
    if how == "header":
        answer = side.chat(name, fallbacks=[])  # the proxy sends x-gateway-fallbacks: none
    else:
        answer = side.chat(name, extra_body={"fallbacks": []})
    assert answer.error is not None
    assert answer.error.status == 429
    assert len(side.attempts(name)) == 2
    assert side.attempts(f"{name}.fb") == []


@STREAMS
def test_retry_waits_for_retry_after_ms(side: Side, stream: bool) -> None:
    name = variant("429-ms", stream)
    answer = side.chat(name, stream=stream)
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert answer.model == side.upstream(name)
    assert (answer.attempts, answer.fallback_used) == (2, False)
    [gap] = side.gaps(name)
    assert 0.55 <= gap < 1.5


@pytest.mark.parametrize(
    "side",
    [
        "proxy",
        "library",
    ],
    indirect=True,
)
def test_retry_is_let_through_once_the_pause_its_429_asked_for_is_over(side: Side) -> None:
    """Several short waits (Retry-After 0.02549 s) in a row, each on its own deployment: every
    retry must reach the upstream, however the event loop rounds its timers."""
    answers = [side.chat(f"429-short.{i}") for i in range(SHORT_WAITS)]
    assert [(a.ok, a.attempts, a.fallback_used) for a in answers] == [(True, 2, False)] * len(
        answers
    ), [a.error.message if a.error else "fallback" for a in answers if a.attempts != 2]
    for i in range(SHORT_WAITS):
        assert len(side.attempts(f"429-short.{i}")) == 2
        [gap] = side.gaps(f"429-short.{i}")
        assert gap >= 0.025


def test_retry_after_over_max_retry_after_fails_over_without_waiting(side: Side) -> None:
    answer = side.chat("429-long")
    assert_fallback_answered(side, answer, "429-long.fb")
    assert answer.seconds < 3
    assert len(side.attempts("429-long")) == 1
    assert answer.attempts == 2


@STREAMS
def test_insufficient_quota_is_not_retried_but_fails_over(side: Side, stream: bool) -> None:
    name = variant("quota", stream)
    answer = side.chat(name, stream=stream)
    assert_fallback_answered(side, answer, f"{name}.fb")
    assert len(side.attempts(name)) == 1
    assert answer.attempts == 2


# --- server errors and broken connections --------------------------------------------------


@STREAMS
def test_500_once_is_retried_on_the_same_deployment(side: Side, stream: bool) -> None:
    name = variant("500-once", stream)
    answer = side.chat(name, stream=stream)
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert answer.model == side.upstream(name)
    assert (answer.attempts, answer.fallback_used) == (2, False)
    assert len(side.attempts(name)) == 2
    assert side.attempts(f"{name}.fb") == []


@STREAMS
def test_fail_over_reports_the_fallbacks_model_and_usage(side: Side, stream: bool) -> None:
    name = variant("503", stream)
    options = {"stream_options": {"include_usage": True}} if stream else {}
    answer = side.chat(name, stream=stream, **options)
    assert_fallback_answered(side, answer, f"{name}.fb")
    assert answer.attempts == 3  # 2 on the primary, 1 on the fallback
    assert len(side.attempts(name)) == 2
    [seen] = side.attempts(f"{name}.fb")
    reported = completion(Call(seen.model, "", seen.body, 1))["usage"]
    assert answer.usage == counts(reported)


@STREAMS
def test_reset_before_headers_is_retried(side: Side, stream: bool) -> None:
    name = variant("reset-once", stream)
    answer = side.chat(name, stream=stream)
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert answer.model == side.upstream(name)
    assert (answer.attempts, answer.fallback_used) == (2, False)
    assert len(side.attempts(name)) == 2


@STREAMS
def test_persistent_reset_fails_over(side: Side, stream: bool) -> None:
    name = variant("reset", stream)
    answer = side.chat(name, stream=stream)
    assert_fallback_answered(side, answer, f"{name}.fb")
    assert len(side.attempts(name)) == 2
    assert answer.attempts == 3


# --- silence -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side_name", "stream"),
    [("proxy", False), ("library", False), ("proxy", True)],
    ids=["proxy-json", "library-json", "proxy-stream"],
)
def test_upstream_that_never_answers_fails_over_after_one_timeout(
    sides: dict[str, Side], side_name: str, stream: bool
) -> None:
    side = sides[side_name]
    name = variant("hang", stream)
    answer = side.chat(name, stream=stream)
    assert_fallback_answered(side, answer, f"{name}.fb")
    assert len(side.attempts(name)) == 1  # a silent route is not retried by default
    assert 0.9 <= answer.seconds < 1.9  # one first_token (1 s), then the fallback


def test_upstream_that_never_answers_without_fallback_gives_504(side: Side) -> None:
    answer = side.chat("hang-nofb")
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (504, "upstream_timeout")
    if side.name == "proxy":
        assert isinstance(answer.error.exception, openai.APIStatusError)
    else:
        assert isinstance(answer.error.exception, gateway.UpstreamTimeoutError)
    assert len(side.attempts("hang-nofb")) == 1
    assert answer.seconds < 1.9


def test_request_timeout_header_bounds_the_whole_request(side: Side) -> None:
    answer = side.chat("hang-long", timeout=1)
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (504, "request_timeout")
    assert 0.9 <= answer.seconds < 2.0
    assert len(side.attempts("hang-long")) == 1


def test_slow_first_token_fails_over_before_anything_reached_the_caller(side: Side) -> None:
    answer = side.chat("slow-first-token", stream=True)
    assert_fallback_answered(side, answer, "slow-first-token.fb")
    assert len(side.attempts("slow-first-token")) == 1
    assert answer.seconds < 1.9


def test_slow_first_byte_fails_over_for_a_complete_answer(sides: dict[str, Side]) -> None:
    side = sides["proxy"]
    answer = side.chat("slow-first-byte")
    assert_fallback_answered(side, answer, "slow-first-byte.fb")
    assert len(side.attempts("slow-first-byte")) == 1
    assert answer.seconds < 1.9


# --- streams that break after the answer started -------------------------------------------


def test_stream_cut_after_output_ends_with_an_error_not_a_fallback(side: Side) -> None:
    answer = side.chat("cut-after", stream=True)
    assert_cut_short(answer)
    assert answer.error is not None
    assert "'faulty/" in answer.error.message
    assert len(side.attempts("cut-after")) == 1
    assert side.attempts("cut-after.fb") == []  # cannot continue an answer: not tried


def test_stream_cut_after_output_is_reported_as_stream_interrupted(side: Side) -> None:
    answer = side.chat("cut-kind", stream=True)
    assert sent_before_cut(answer.text)
    assert answer.error is not None
    assert answer.error.code == "stream_interrupted"
    if side.name == "library":
        assert isinstance(answer.error.exception, gateway.StreamInterruptedError)


def test_events_received_before_a_cut_reach_a_slow_consumer() -> None:
    """An event that arrived just before the cut, while the caller was still busy with the
    previous chunk, is delivered before the error."""
    with LateCutUpstream(before=2, after=1, pause=0.1) as late:
        config = {
            "routing": {"retries": {"attempts_per_deployment": 1}, "circuit": {"enabled": False}},
            "providers": {"late": {"type": "openai", "api_key": "x", "base_url": late.url + "/v1"}},
            "models": {"late-cut": {"deployments": [{"provider": "late", "model": "late-cut"}]}},
        }
        with gateway.Gateway(config) as gw:
            answer = Answer()
            stream = gw.chat.completions.create(
                model="late-cut", messages=[{"role": "user", "content": PROMPT}], stream=True
            )
            with pytest.raises(gateway.GatewayError):
                for chunk in stream:
                    read_chunk(answer, chunk.model_dump())
                    time.sleep(0.3)  # busy with this chunk while the rest and the cut arrive
        assert late.requests == 1
    assert answer.text == PARTIAL


def test_stream_cut_raises_api_error_in_the_openai_sdk(sides: dict[str, Side]) -> None:
    proxy = sides["proxy"].caller
    assert isinstance(proxy, ProxyCaller)
    proxy.calls += 1  # so the health check after the test covers this gateway
    text = ""
    stream = proxy.client.chat.completions.create(
        model="cut-sdk", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert sent_before_cut(text)
    assert "faulty" in raised.value.message


def test_cut_stream_is_continued_seamlessly_on_a_prefill_fallback(
    side: Side, mistral: MistralEmulator
) -> None:
    answer = side.chat("cut-cont", stream=True)
    assert answer.ok, answer.error
    [request] = mistral.requests
    prefix = request.body["messages"][-1]
    assert prefix == {"role": "assistant", "content": prefix["content"], "prefix": True}
    assert sent_before_cut(prefix["content"])  # all the caller had been sent
    assert answer.text == prefix["content"] + " and so on"  # the echo is not repeated
    assert answer.finish_reason == "stop"
    assert len(answer.ids) == 1
    if side.name == "proxy":
        assert answer.done is True
    else:
        assert answer.continued is True
    assert len(side.attempts("cut-cont")) == 1
    assert side.attempts("cut-cont.fb") == []


@pytest.mark.parametrize("failure", ["bad-key", "500"])
def test_failed_continuation_reports_the_original_cut(
    side: Side, mistral: MistralEmulator, failure: str
) -> None:
    name = "cut-cont-badkey" if failure == "bad-key" else "cut-cont-500"
    if failure == "500":
        for _ in range(ROUTING["retries"]["attempts_per_deployment"]):
            mistral.fail_next(Fault(status=500, body=b'{"message": "mistral is down"}'))
    answer = side.chat(name, stream=True)
    assert_cut_short(answer)
    assert answer.error is not None
    assert f"'faulty/{side.upstream(name)}'" in answer.error.message
    assert "mistral" not in answer.error.message.lower()
    assert len(mistral.requests) == (1 if failure == "bad-key" else 2)


def test_stalled_stream_ends_with_an_error_after_the_idle_timeout(side: Side) -> None:
    answer = side.chat("stall-after", stream=True)
    assert_cut_short(answer, PARTIAL)
    assert answer.error_after is not None
    assert 0.9 <= answer.error_after < 2.5
    assert len(side.attempts("stall-after")) == 1
    assert side.attempts("stall-after.fb") == []


def test_malformed_event_is_skipped_and_the_answer_completes(side: Side) -> None:
    answer = side.chat("malformed-mid-stream", stream=True)
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert answer.finish_reason == "stop"
    if side.name == "proxy":
        assert answer.done is True
    else:
        assert answer.malformed_events == 1
    assert len(side.attempts("malformed-mid-stream")) == 1


def test_stream_with_finish_reason_but_no_done_is_complete(side: Side) -> None:
    answer = side.chat("no-done", stream=True)
    assert answer.ok, answer.error
    assert answer.text == FULL
    assert answer.finish_reason == "stop"
    if side.name == "proxy":
        assert answer.done is True  # the proxy still ends the stream properly
    assert len(side.attempts("no-done")) == 1


def test_stream_without_finish_reason_or_done_ends_with_an_error(side: Side) -> None:
    answer = side.chat("no-finish", stream=True)
    assert_cut_short(answer, FULL)
    assert answer.error is not None
    if side.name == "library":
        assert isinstance(answer.error.exception, gateway.StreamInterruptedError)
    assert answer.error.code == "stream_interrupted"
    assert len(side.attempts("no-finish")) == 1
    assert side.attempts("no-finish.fb") == []


# --- errors about the request --------------------------------------------------------------


@STREAMS
def test_context_length_goes_straight_to_the_context_window_fallback(
    side: Side, stream: bool
) -> None:
    name = variant("ctx", stream)
    answer = side.chat(name, stream=stream)
    assert_fallback_answered(side, answer, f"{name}.big")
    assert len(side.attempts(name)) == 1
    assert side.attempts(f"{name}.fb") == []  # ordinary fallbacks are not for this
    assert answer.attempts == 2


def test_context_length_without_context_window_fallbacks_is_a_400(side: Side) -> None:
    answer = side.chat("ctx-nocwf")
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (400, "context_length_exceeded")
    if side.name == "proxy":
        assert isinstance(answer.error.exception, openai.BadRequestError)
    assert len(side.attempts("ctx-nocwf")) == 1
    assert side.attempts("ctx-nocwf.fb") == []


@STREAMS
def test_content_filter_is_a_400_without_retry_or_fail_over(side: Side, stream: bool) -> None:
    name = variant("content-filter", stream)
    answer = side.chat(name, stream=stream)
    assert answer.error is not None
    assert (answer.error.status, answer.error.code) == (400, "content_filter")
    if side.name == "proxy":
        assert isinstance(answer.error.exception, openai.BadRequestError)
    else:
        assert isinstance(answer.error.exception, gateway.ContentFilterError)
    assert len(side.attempts(name)) == 1
    assert side.attempts(f"{name}.fb") == []


@pytest.mark.parametrize(
    "provider",
    [
        "azure",
        "openai",
    ],
)
def test_content_filter_error_names_the_tripped_category(side: Side, provider: str) -> None:
    name = f"content-filter-{provider}"
    answer = side.chat(name)
    assert answer.error is not None
    assert answer.error.code == "content_filter"
    assert "violence" in answer.error.message
    assert "hate" not in answer.error.message  # reported, but not filtered


@pytest.mark.parametrize("side_name", ["proxy", "library"])
def test_content_filter_fails_over_when_configured_to(
    content_filter_sides: dict[str, Side], side_name: str
) -> None:
    side = content_filter_sides[side_name]
    name = variant("content-filter", False)
    answer = side.chat(name)
    assert_fallback_answered(side, answer, f"{name}.fb")
    assert len(side.attempts(name)) == 1


# --- circuit breaker and budgets -----------------------------------------------------------


def test_circuit_opens_on_an_outage_probes_once_per_cooldown_and_closes_again(
    side: Side,
) -> None:
    outage = "outage-" + side.name
    side.up.set_down(outage)
    try:
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < 2.5 * COOLDOWN:
            answers.append(side.chat("circuit"))
            time.sleep(0.05)
        during = side.attempts("circuit")
    finally:
        side.up.set_down(outage, False)
    for answer in answers:
        assert_fallback_answered(side, answer, "circuit.fb", first_call=False)
    # Request 1 tries the primary twice, request 2 once more: 3 failures open the circuit.
    assert [a.attempts for a in answers[:2]] == [3, 2]
    assert len(during) >= 3
    assert len(answers) > 8
    opened = during[2].started
    probes = [a.started for a in during[3:]]
    gaps = [later - earlier for earlier, later in itertools.pairwise([opened, *probes])]
    assert all(gap >= 0.95 * COOLDOWN for gap in gaps), "more than one probe per cooldown"
    assert probes, "no probe in 2.5 cooldowns"
    # While open, a request goes straight to the fallback (1 attempt) unless it is the probe.
    assert sorted(a.attempts or 0 for a in answers[2:]) == [1] * (
        len(answers) - 2 - len(probes)
    ) + [2] * len(probes)

    time.sleep(COOLDOWN * 1.2)
    recovered = side.chat("circuit")
    assert recovered.ok, recovered.error
    assert recovered.model == side.upstream("circuit")
    assert (recovered.attempts, recovered.fallback_used) == (1, False)
    assert side.chat("circuit").fallback_used is False


def test_attempts_never_exceed_attempts_per_request(side: Side) -> None:
    answer = side.chat("503-many")
    assert answer.error is not None
    assert answer.error.status == 503
    seen = [
        len(side.attempts(name, i))
        for name, count in (("503-many", 3), ("503-many.fb1", 1), ("503-many.fb2", 1))
        for i in range(count)
    ]
    assert sum(seen) == ROUTING["retries"]["attempts_per_request"]
    assert max(seen) <= ROUTING["retries"]["attempts_per_deployment"]
    assert answer.attempts in (5, None)
    assert "all 5 attempts failed" in answer.error.message
