"""Load generators: wrk with a generated Lua script when installed, else asyncio + aiohttp.

Both keep ``connections`` requests in flight for ``duration`` seconds (a closed loop: each
connection sends its next request when the previous answer has been read completely), and
report throughput, latency percentiles, errors and, when asked, the values of the gateway's
``x-gateway-overhead-ms`` response header.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OVERHEAD_HEADER = "x-gateway-overhead-ms"


@dataclass(slots=True)
class Target:
    """One URL to load, the body to POST and the headers to send."""

    url: str
    body: str
    headers: dict[str, str]
    sample_overhead: bool = False


@dataclass(slots=True)
class LoadResult:
    requests: int
    duration_s: float
    rps: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    overhead_ms: dict[str, float] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(values: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles plus mean/max/count, or {} for no values."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {f"p{p}": ordered[min(len(ordered) - 1, (len(ordered) * p) // 100)] for p in points}
    out["mean"] = sum(ordered) / len(ordered)
    out["max"] = ordered[-1]
    out["count"] = float(len(ordered))
    return out


def generator_name(kind: str) -> str:
    """Resolve "auto" to the generator this machine has."""
    if kind == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if kind == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    return kind


def run_load(
    kind: str, target: Target, *, duration: float, connections: int, threads: int
) -> LoadResult:
    if kind == "wrk":
        return run_wrk(target, duration=duration, connections=connections, threads=threads)
    coro = run_python(target, duration=duration, connections=connections)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --- wrk ----------------------------------------------------------------------------------

_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
threads = {{}}
function setup(thread)
    table.insert(threads, thread)
end
{response}
function done(summary, latency, requests)
    local f = io.open("{out}", "w")
    local e = summary.errors
    f:write(string.format(
        '{{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
        '"status":%d,"timeout":%d,"mean_us":%f,"max_us":%d,' ..
        '"p50_us":%d,"p90_us":%d,"p99_us":%d}}\\n',
        summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
        latency.mean, latency.max,
        latency:percentile(50), latency:percentile(90), latency:percentile(99)))
    for _, t in ipairs(threads) do
        local samples = t:get("overhead")
        if samples then
            for _, v in ipairs(samples) do f:write(v, "\\n") end
        end
    end
    f:close()
end
"""

# Defined only when sampling: a Lua response() callback costs wrk a little per request.
_WRK_RESPONSE = """\
overhead = {{}}
function response(status, headers, body)
    local v = headers["{header}"]
    if v and #overhead < 100000 then
        overhead[#overhead + 1] = tonumber(v)
    end
end
"""


def run_wrk(target: Target, *, duration: float, connections: int, threads: int) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        out = Path(tmp) / "result.txt"
        headers = "\n".join(
            f'wrk.headers["{name}"] = "{value}"' for name, value in target.headers.items()
        )
        script = _WRK_SCRIPT.format(
            body=target.body,
            headers=headers,
            out=out,
            response=_WRK_RESPONSE.format(header=OVERHEAD_HEADER) if target.sample_overhead else "",
        )
        script_path = Path(tmp) / "post.lua"
        script_path.write_text(script)
        argv = [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script_path),
            target.url,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
        first, *rest = out.read_text().splitlines()
    stats = json.loads(first)
    seconds = stats["duration_us"] / 1e6
    samples = [float(v) for v in rest if v.strip()]
    return LoadResult(
        requests=stats["requests"],
        duration_s=seconds,
        rps=stats["requests"] / seconds if seconds else 0.0,
        latency_ms={
            "p50": stats["p50_us"] / 1000,
            "p90": stats["p90_us"] / 1000,
            "p99": stats["p99_us"] / 1000,
            "mean": stats["mean_us"] / 1000,
            "max": stats["max_us"] / 1000,
        },
        errors={k: stats[k] for k in ("connect", "read", "write", "status", "timeout") if stats[k]},
        overhead_ms=percentiles(samples),
    )


# --- asyncio + aiohttp ----------------------------------------------------------------------


async def run_python(target: Target, *, duration: float, connections: int) -> LoadResult:
    """The fallback generator; one Python process, so it saturates long before wrk does."""
    import aiohttp

    latencies: list[float] = []
    overhead: list[float] = []
    errors: dict[str, int] = {}
    body = target.body.encode()
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=10)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(deadline: float) -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    async with session.post(target.url, data=body, headers=target.headers) as r:
                        await r.read()
                        status = r.status
                        value = r.headers.get(OVERHEAD_HEADER)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    key = "timeout" if isinstance(exc, TimeoutError) else "connect"
                    errors[key] = errors.get(key, 0) + 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                if status >= 400:
                    errors["status"] = errors.get("status", 0) + 1
                if target.sample_overhead and value is not None:
                    overhead.append(float(value))

        began = time.perf_counter()
        deadline = began + duration
        await asyncio.gather(*(worker(deadline) for _ in range(connections)))
        seconds = time.perf_counter() - began

    stats = percentiles(latencies)
    return LoadResult(
        requests=len(latencies),
        duration_s=seconds,
        rps=len(latencies) / seconds,
        latency_ms={k: v for k, v in stats.items() if k != "count"},
        errors=errors,
        overhead_ms=percentiles(overhead),
    )
