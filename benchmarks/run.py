"""Run the benchmark: ``python -m benchmarks.run`` (``--help`` for the options).

One static upstream serves every scenario of the run. Each scenario (direct, llm-gateway and
its transport / loop / parser variants, LiteLLM) is started in turn, checked with one real
request per mode, warmed up, loaded for ``--duration`` seconds at ``--connections``, then
sampled with sequential requests on one idle connection. Results are printed as markdown and
saved as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.load import (
    OVERHEAD_HEADER,
    Target,
    generator_name,
    percentiles,
    run_load,
)
from benchmarks.payloads import MASTER_KEY, request_body
from benchmarks.processes import cores_busy_seconds, cpu_sets
from benchmarks.report import (
    chart,
    markdown,
    pipeline_markdown,
    results_file,
    run_facts,
    summarize,
)
from benchmarks.targets import (
    DEFAULT_SCENARIOS,
    REPO,
    SCENARIOS,
    RunningTarget,
    Skipped,
    gateway_source,
)
from benchmarks.upstream import StaticUpstream

MODES = ("chat", "stream", "embed", "responses", "responses-native")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Throughput and latency of llm-gateway against a static upstream.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first")
    p.add_argument(
        "--connections", default="32", help="concurrent connections; a list runs each: 1,32"
    )
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, or 'all' ({', '.join(SCENARIOS)})",
    )
    p.add_argument(
        "--modes",
        default="chat,stream,responses,responses-native",
        help=f"comma-separated of {', '.join(MODES)}",
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat every scenario this many times")
    p.add_argument(
        "--baseline",
        default="gateway",
        help="scenario the req/s ratio column compares against, round by round",
    )
    p.add_argument("--idle-samples", type=int, default=100, help="sequential requests, 1 conn")
    p.add_argument("--load-generator", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--upstream", choices=("auto", "nginx", "python"), default="auto")
    p.add_argument(
        "--no-pin", action="store_true", help="do not pin proxy and load to separate cores"
    )
    p.add_argument("--output", type=Path, help="JSON file (default: benchmarks/results/<time>)")
    p.add_argument("--chart", type=Path, help="also draw req/s (c=32) and added p50 (c=1) as PNG")
    p.add_argument(
        "--soak", type=float, default=0.0, help="seconds of chat load on --soak-scenario at the end"
    )
    p.add_argument("--soak-scenario", default="gateway-full", help="scenario for --soak")
    p.add_argument("--soak-connections", type=int, default=32)
    p.add_argument("--soak-interval", type=float, default=10.0, help="seconds between RSS samples")
    args = p.parse_args(argv)
    names = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    for name in names:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    args.scenario_list = names
    if args.soak_scenario not in SCENARIOS:
        p.error(f"unknown --soak-scenario {args.soak_scenario!r}")
    args.mode_list = args.modes.split(",")
    for mode in args.mode_list:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    args.connection_list = [int(c) for c in args.connections.split(",")]
    return args


def headers(key: str = MASTER_KEY) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}


def check_answer(url: str, mode: str, body: str, key: str = MASTER_KEY) -> None:
    """One real request: the scenario must answer correctly before it is measured."""
    status, data, _ = _post(url, body, key=key)
    text = data.decode(errors="replace")
    ok = status == 200 and (
        text.rstrip().endswith("data: [DONE]") if mode == "stream" else text.startswith("{")
    )
    if not ok:
        raise RuntimeError(f"{url} answered {status}: {text[:300]}")


def _post(
    url: str,
    body: str,
    conn: http.client.HTTPConnection | None = None,
    key: str = MASTER_KEY,
    first_byte: list[float] | None = None,
) -> tuple[int, bytes, str | None]:
    """POST ``body``; with ``first_byte``, append the ms until the first body byte arrived."""
    parts = urlsplit(url)
    c = conn or http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        start = time.perf_counter()
        c.request("POST", parts.path, body=body.encode(), headers=headers(key))
        resp = c.getresponse()
        head = b""
        if first_byte is not None:
            head = resp.read1(1)
            first_byte.append((time.perf_counter() - start) * 1000)
        return resp.status, head + resp.read(), resp.getheader(OVERHEAD_HEADER)
    finally:
        if conn is None:
            c.close()


def idle_sample(url: str, body: str, count: int, key: str = MASTER_KEY) -> dict[str, Any]:
    """Sequential requests on one keep-alive connection: latency without queueing."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    latencies: list[float] = []
    overhead: list[float] = []
    first_byte: list[float] = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            status, _, value = _post(url, body, conn, key, first_byte)
            latencies.append((time.perf_counter() - start) * 1000)
            if value is not None and status == 200:
                overhead.append(float(value))
    finally:
        conn.close()
    return {
        "latency_ms": percentiles(latencies),
        "overhead_ms": percentiles(overhead),
        # For a stream: time to the first event (TTFT as a client on one idle connection sees it).
        "first_byte_ms": percentiles(first_byte),
    }


def environment(upstream: StaticUpstream, generator: str, pin: tuple[str | None, ...]) -> Any:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    def run(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
        except OSError:
            return ""
        return (out.stdout or out.stderr).strip()

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in run("lscpu").splitlines() if "Model name" in ln),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "upstream": upstream.description,
        "load_generator": run("wrk", "-v").splitlines()[0] if generator == "wrk" else generator,
        "pinning": {"load_and_upstream": pin[0], "proxy": pin[1]},
        "git": run("git", "rev-parse", "--short", "HEAD")
        + (" (dirty)" if run("git", "status", "--porcelain") else ""),
        "gateway_source": gateway_source(),
        "packages": {
            p: version(p)
            for p in (
                "aiohttp",
                "httpx",
                "uvicorn",
                "uvloop",
                "httptools",
                "h11",
                "fastapi",
                "starlette",
                "pydantic",
                "orjson",
            )
        },
    }


class Bench:
    """One run: the shared upstream, the settings, and what has been measured so far."""

    def __init__(self, args: argparse.Namespace, upstream: StaticUpstream, workdir: Path) -> None:
        self.args = args
        self.upstream = upstream
        self.workdir = workdir
        self.generator = generator_name(args.load_generator)
        self.proxy_cpus = cpu_sets(not args.no_pin)[1]
        self.records: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.memory: dict[str, Any] = {}
        self.soak: dict[str, Any] | None = None

    def run_scenario(self, name: str, round_no: int) -> None:
        scenario = SCENARIOS[name]
        print(f"\n[{round_no}/{self.args.rounds}] {name}: {scenario.description}", flush=True)
        try:
            target = RunningTarget(scenario, self.upstream.url, self.workdir, self.proxy_cpus)
        except (Skipped, RuntimeError) as exc:
            print(f"  skipped: {exc}")
            self.skipped[name] = str(exc)
            return
        if target.version:
            self.versions[name] = target.version
        try:
            for mode in self.args.mode_list:
                try:
                    self.run_mode(target, mode, round_no)
                except (RuntimeError, OSError) as exc:  # e.g. wrk failed, or the proxy died
                    print(f"  {mode}: measurement failed: {exc}")
                    self.skipped[f"{name}/{mode}"] = f"measurement failed: {exc}"
            memory = target.memory()
            if memory is not None:
                self.memory.setdefault(name, []).append(memory)
                print(f"  peak RSS: {memory['peak_mib']:.1f} MiB (largest single process)")
        finally:
            target.stop()

    def run_mode(self, target: RunningTarget, mode: str, round_no: int) -> None:
        name = target.scenario.name
        url, body = target.url(mode), request_body(mode, target.model(mode))
        try:
            check_answer(url, mode, body, target.key)
        except (RuntimeError, OSError) as exc:
            print(f"  {mode}: not measured, the answer was wrong: {exc}")
            self.skipped[f"{name}/{mode}"] = str(exc)
            return
        load = Target(url, body, headers(target.key), sample_overhead=target.is_gateway)
        for conns in self.args.connection_list:
            if self.args.warmup > 0:
                run_load(
                    self.generator, load, duration=self.args.warmup, connections=conns, threads=1
                )
            target.wait_quiet()
            cpu_before = target.cpu_seconds()
            core_before = cores_busy_seconds(self.proxy_cpus)
            result = run_load(
                self.generator,
                load,
                duration=self.args.duration,
                connections=conns,
                threads=self.args.threads,
            )
            cpu_after = target.cpu_seconds()
            core_after = cores_busy_seconds(self.proxy_cpus)
            idle = idle_sample(url, body, self.args.idle_samples, target.key)
            memory = target.memory()
            cpu = None
            if cpu_before is not None and cpu_after is not None:
                cpu = cpu_after - cpu_before
            # Other processes on the proxy's core steal its time and make the run noisy.
            foreign = None
            if core_before is not None and core_after is not None:
                foreign = max(0.0, core_after - core_before - (cpu or 0.0))
            self.records.append(
                {
                    "round": round_no,
                    "scenario": name,
                    "mode": mode,
                    "connections": conns,
                    "load": result.to_json(),
                    "proxy_cpu_seconds": cpu,
                    "proxy_cpu_ms_per_request": (
                        cpu * 1000 / result.requests
                        if cpu is not None and result.requests
                        else None
                    ),
                    "idle": idle,
                    "other_cpu_on_proxy_core_seconds": foreign,
                    "proxy_peak_rss_mib": memory["peak_mib"] if memory else None,
                }
            )
            hdr = result.overhead_ms
            print(
                f"  {mode:6} c={conns:<3} {result.rps:10,.0f} req/s  "
                f"p50 {result.latency_ms.get('p50', 0):7.2f} ms  "
                f"p99 {result.latency_ms.get('p99', 0):7.2f} ms  "
                f"errors {result.error_count}"
                + (f"  overhead hdr p50 {hdr['p50']:.2f} ms" if hdr else ""),
                flush=True,
            )
            # (Loopback traffic's kernel work lands on that core too, hence the 5% allowance.)
            if target.process and foreign is not None and foreign > 0.05 * result.duration_s:
                print(
                    f"  note: other processes used {foreign:.1f}s of CPU on the proxy's core "
                    "during this run; its numbers are pessimistic",
                    flush=True,
                )

    def run_soak(self) -> None:
        """Chat load for ``--soak`` seconds on one scenario, sampling its RSS as it runs."""
        name, seconds = self.args.soak_scenario, self.args.soak
        print(f"\nsoak: {name}, chat, c={self.args.soak_connections}, {seconds:g}s", flush=True)
        try:
            target = RunningTarget(
                SCENARIOS[name], self.upstream.url, self.workdir, self.proxy_cpus
            )
        except (Skipped, RuntimeError) as exc:
            print(f"  skipped: {exc}")
            self.skipped[f"soak/{name}"] = str(exc)
            return
        try:
            url, body = target.url("chat"), request_body("chat", target.model("chat"))
            check_answer(url, "chat", body, target.key)
            load = Target(url, body, headers(target.key))
            out: dict[str, Any] = {}

            def work() -> None:
                out["load"] = run_load(
                    self.generator,
                    load,
                    duration=seconds,
                    connections=self.args.soak_connections,
                    threads=self.args.threads,
                )

            began = time.monotonic()
            worker = threading.Thread(target=work)
            worker.start()
            samples = []
            while worker.is_alive():
                memory = target.memory() or {}
                samples.append(
                    {
                        "t": round(time.monotonic() - began, 1),
                        "rss_mib": memory.get("rss_mib"),
                        "peak_mib": memory.get("peak_mib"),
                    }
                )
                print(f"  t={samples[-1]['t']:6.1f}s  RSS {memory.get('rss_mib', 0):.1f} MiB")
                worker.join(self.args.soak_interval)
            memory = target.memory() or {}
            samples.append(
                {
                    "t": round(time.monotonic() - began, 1),
                    "rss_mib": memory.get("rss_mib"),
                    "peak_mib": memory.get("peak_mib"),
                }
            )
            result = out.get("load")
            self.soak = {
                "scenario": name,
                "seconds": seconds,
                "connections": self.args.soak_connections,
                "load": result.to_json() if result else None,
                "samples": samples,
            }
            if result:
                print(
                    f"  {result.rps:,.0f} req/s, errors {result.error_count}; "
                    f"RSS {samples[0]['rss_mib']:.1f} → {samples[-1]['rss_mib']:.1f} MiB"
                )
        finally:
            target.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_cpus, proxy_cpus = cpu_sets(not args.no_pin)
    if load_cpus is not None:
        os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})  # wrk inherits it
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-bench-"))
    began = time.monotonic()
    upstream = StaticUpstream(args.upstream, workdir, load_cpus)
    bench = Bench(args, upstream, workdir)
    env = environment(upstream, bench.generator, (load_cpus, proxy_cpus))
    print(f"upstream:       {upstream.description} at {upstream.url}")
    print(f"load generator: {env['load_generator']}")
    print(f"machine:        {env['cpu']}, {env['cores']} cores; pinning: {env['pinning']}")
    print(f"gateway code:   {env['gateway_source']} (repo {env['git']})")
    print(f"logs:           {workdir}")
    try:
        for round_no in range(1, args.rounds + 1):
            for name in args.scenario_list:
                if name not in bench.skipped:
                    bench.run_scenario(name, round_no)
        if args.soak > 0:
            bench.run_soak()
    finally:
        upstream.stop()
    baseline = args.baseline if args.baseline in args.scenario_list else None
    rows = summarize(bench.records, baseline)
    table = markdown(rows, baseline)
    pipeline = pipeline_markdown(rows)
    print()
    print(table)
    print()
    print(pipeline)
    for name, why in bench.skipped.items():
        print(f"\nskipped {name}: {why}")
    out = results_file(args.output)
    result = {
        **run_facts(args, began),
        "environment": {**env, "versions": bench.versions},
        "scenarios": {n: SCENARIOS[n].description for n in args.scenario_list},
        "skipped": bench.skipped,
        "records": bench.records,
        "memory": bench.memory,
        "soak": bench.soak,
        "summary": rows,
        "markdown": table,
        "pipeline_markdown": pipeline,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"\nsaved {out} ({result['wall_seconds']}s)")
    if args.chart:  # after saving: a run's numbers are never lost to the chart
        try:
            chart(rows, args.chart)
        except ImportError as exc:
            print(f"\nno chart: {exc} (pip install -e '.[bench]')")
            return 1
        print(f"\nchart: {args.chart} ({args.chart.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
