"""The paced-stream benchmark's own parts: the upstream paces each stream's events and stamps
them, and a reader counts every event and measures its delay and the gaps between them.
(The benchmark itself runs by hand: ``python -m benchmarks.paced``.)"""

from __future__ import annotations

import itertools
import subprocess
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from benchmarks.processes import Process
from tests.harness import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["openai", "mistral"])
def paced(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.paced_upstream", "--port", str(port)]
    argv += ["--events", "4", "--rate", "40", "--shape", request.param]
    process = Process("paced", argv, tmp_path, cwd=REPO)
    try:
        process.wait_port(port, 10)
        yield port, request.param
    finally:
        process.stop()


def test_the_upstream_sends_each_event_at_its_pace_with_its_send_time(
    paced: tuple[int, str],
) -> None:
    port, shape = paced
    body: dict[str, object] = {"model": "m", "stream": True, "max_tokens": 5, "messages": []}
    if shape == "openai":
        body["stream_options"] = {"include_usage": True}
    arrivals = []
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(line[6:])
    assert arrivals[-1] == "[DONE]"
    chunks = [orjson.loads(a) for a in arrivals[:-1]]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    marks = [int(t.removeprefix(" t")) for t in texts if t and t.startswith(" t")]
    assert len(marks) == 5  # max_tokens content events, each stamped
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(marks)]
    assert all(20 <= g < 40 for g in gaps), gaps  # 40 events/s: one every 25 ms
    usage = next(c["usage"] for c in chunks if c.get("usage"))
    assert usage["completion_tokens"] == 5


def test_a_reader_keeps_its_streams_open_and_measures_the_window(
    paced: tuple[int, str], tmp_path: Path
) -> None:
    # 8 slots of 8-event streams at 40 events/s (0.2 s each), started over 0.2 s: from then
    # on 8 streams are open at any time, and the window (the next 0.2 s) holds about 8
    # events per slot. Two slots read slowly: their events are counted, not timed.
    port, _ = paced
    body = tmp_path / "body.json"
    body.write_bytes(orjson.dumps({"model": "m", "stream": True, "max_tokens": 8}))
    out = tmp_path / "reader.json"
    argv = [sys.executable, "-m", "benchmarks.paced_reader", "--port", str(port)]
    argv += ["--path", "/v1/chat/completions", "--key", "k", "--body", str(body)]
    argv += ["--streams", "8", "--events", "8", "--rate", "40", "--ramp", "0.2"]
    argv += ["--slow", "0.25", "--out", str(out)]
    subprocess.run(argv, cwd=REPO, check=True, timeout=30)
    seen = orjson.loads(out.read_bytes())
    streams = seen["streams"]
    low, high = seen["window"]
    assert 0.19 < high - low < 0.21
    assert all(s["error"] is None for s in streams)
    assert len([s for s in streams if not s["slow"]]) >= 6 * 2  # each slot streamed again
    timed = sum(s["window_events"] for s in streams if not s["slow"])
    assert 6 * 6 <= timed <= 6 * 10
    delays = array("i")
    delays.frombytes(Path(f"{out}.delays").read_bytes())
    assert len(delays) == timed  # the slow slots' events are kept apart
    assert all(0 <= d < 50_000 for d in delays)  # µs, through nothing but loopback
    gaps = array("i")
    gaps.frombytes(Path(f"{out}.gaps").read_bytes())
    assert gaps and all(10_000 <= g < 60_000 for g in gaps), list(gaps)
    ttfts = [s["ttft_us"] for s in streams if s["started_in_window"] and not s["slow"]]
    assert ttfts and all(t is not None and t < 50_000 for t in ttfts)
