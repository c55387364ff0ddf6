"""Many long streams at once: ``python -m benchmarks.paced`` (``--help`` for the options).

A paced upstream (``benchmarks/paced_upstream.py``) sends every stream's events one at a
time at ``--rate`` events per second, each stamped with its send time. For each scenario
(direct, llm-gateway with its whole pipeline, LiteLLM) and each number C of concurrent
streams, the proxy is started afresh, warmed up with a few short streams, left to go quiet,
and then ``benchmarks/paced_reader.py`` keeps C streams open: slots start evenly over one
stream's length and each opens its next stream as soon as one ends, so after that ramp C
streams are open and C / length start each second. Measured over the next stream's length
(the window): how late events arrived (p50 / p99 / max) and how much of that the proxy added
(minus the direct run's figure at the same C), streams that saw a gap over the stall
threshold, time to first token, the proxy's CPU per event, and its RSS per open stream
beyond what it held idle.

The proxy runs alone on the last cores; the upstream and the readers share core 0. The direct
run at the same C tells where that core, not the proxy, becomes the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import orjson

from benchmarks.load import percentiles
from benchmarks.payloads import BASE_PATHS, MODELS, OPERATIONS
from benchmarks.processes import Process, cpu_sets, free_port
from benchmarks.report import results_file, run_facts
from benchmarks.targets import REPO, SCENARIOS, RunningTarget, Skipped, stream_model

STALL_MS = 250.0
TARGET_ADDED_P99_MS = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.paced",
        description="Many long paced streams at once through each proxy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--scenarios", default="direct,gateway-full,litellm")
    p.add_argument("--streams", default="64,256,512,1024,2048", help="concurrent streams (C)")
    p.add_argument("--rates", default="20,50", help="events per second per stream")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each stream")
    p.add_argument(
        "--ramp", type=float, default=0.0, help="seconds over which slots start (0: --seconds)"
    )
    p.add_argument("--readers", type=int, default=1, help="reader processes")
    p.add_argument("--slow", type=float, default=0.0, help="share of slow-reading streams")
    p.add_argument("--shape", choices=("openai", "mistral"), default="openai")
    p.add_argument(
        "--litellm-streams",
        default="4,16,64",
        help="the C LiteLLM is measured at (its knee is far below the gateway's)",
    )
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--output", type=Path, help="JSON (default benchmarks/results/paced-<time>)")
    p.add_argument("--chart", type=Path, help="also draw p99 added delay and RSS per stream")
    args = p.parse_args(argv)
    args.scenario_list = args.scenarios.split(",")
    for name in args.scenario_list:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}")
    args.stream_list = [int(c) for c in args.streams.split(",")]
    args.litellm_list = [int(c) for c in args.litellm_streams.split(",")]
    args.rate_list = [float(r) for r in args.rates.split(",")]
    return args


def request_body(model: str, events: int) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": events,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Tell me a long story."},
            ],
        }
    )


class PacedRun:
    """One rate: the paced upstream, and every scenario and C measured against it."""

    def __init__(self, args: argparse.Namespace, rate: float, workdir: Path) -> None:
        self.args = args
        self.rate = rate
        self.events = max(2, round(rate * args.seconds))
        self.workdir = workdir
        self.load_cpus, self.proxy_cpus = cpu_sets(not args.no_pin)
        port = free_port()
        self.upstream_url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "benchmarks.paced_upstream", "--port", str(port)]
        argv += ["--events", str(self.events), "--rate", str(rate), "--shape", args.shape]
        self.upstream = Process(
            f"paced-upstream-{rate:g}", argv, workdir, cpus=self.load_cpus, cwd=REPO
        )
        self.upstream.wait_port(port, 10)

    def stop(self) -> None:
        self.upstream.stop()

    def measure(self, name: str, streams: int) -> dict[str, Any] | None:
        args = self.args
        print(f"\n{name}, {streams} streams at {self.rate:g} events/s", flush=True)
        try:
            target = RunningTarget(
                SCENARIOS[name],
                self.upstream_url,
                self.workdir,
                self.proxy_cpus,
                provider_type=args.shape,
            )
        except (Skipped, RuntimeError) as exc:
            print(f"  skipped: {exc}")
            return {"skipped": str(exc)}
        try:
            if target.process is None:
                url = self.upstream_url + BASE_PATHS["stream"] + OPERATIONS["stream"]
                model = stream_model(args.shape)
            else:
                url = target.url("stream")
                model = MODELS["stream"]
            path = "/" + url.split("/", 3)[3]
            port = int(url.split(":")[2].split("/")[0])
            # Warm up: a few short streams, then wait until the proxy is quiet.
            self.read(port, path, target.key, model, 16, events=3, ramp=0.2, tag="warmup")
            quiet = target.wait_quiet()
            idle = target.memory()
            began = time.monotonic()
            samples: list[tuple[float, float, float]] = []  # (time, CPU seconds, RSS MiB)
            readers = self.start_readers(port, path, target.key, model, streams)
            while any(r.poll() is None for r in readers):
                if target.process is not None:
                    memory = target.memory() or {}
                    cpu = target.cpu_seconds() or 0.0
                    samples.append((time.monotonic(), cpu, memory.get("rss_mib") or 0.0))
                time.sleep(0.2)
            wall = time.monotonic() - began
            for r in readers:
                if r.returncode != 0:
                    raise RuntimeError(f"a reader exited with code {r.returncode}")
            record, window = self.collect(streams)
            record.update(
                {
                    "scenario": name,
                    "rate": self.rate,
                    "wall_seconds": round(wall, 2),
                    "quiet_after_warmup_seconds": quiet,
                }
            )
            inside = [x for x in samples if window[0] <= x[0] <= window[1]]
            if target.process is not None and len(inside) >= 2:
                cpu = inside[-1][1] - inside[0][1]
                span = inside[-1][0] - inside[0][0]
                events = record["window_events"] * span / (window[1] - window[0])
                record["proxy_cpu_share"] = round(cpu / span, 3)
                record["proxy_cpu_us_per_event"] = round(cpu * 1e6 / events, 1) if events else None
                idle_mib = idle["rss_mib"] if idle else None
                peak = max(x[2] for x in inside)
                record["idle_rss_mib"] = idle_mib
                record["peak_rss_mib"] = peak
                if idle_mib is not None:
                    record["rss_kib_per_stream"] = round((peak - idle_mib) * 1024 / streams, 1)
            show(record)
            return record
        finally:
            target.stop()

    def start_readers(
        self, port: int, path: str, key: str, model: str, streams: int
    ) -> list[subprocess.Popen[bytes]]:
        body = self.workdir / "body.json"
        body.write_bytes(request_body(model, self.events))
        count = max(1, min(self.args.readers, streams))
        procs = []
        for index in range(count):
            share = streams // count + (1 if index < streams % count else 0)
            out = self.workdir / f"reader-{index}.json"
            argv = [sys.executable, "-m", "benchmarks.paced_reader", "--port", str(port)]
            argv += ["--path", path, "--key", key, "--body", str(body)]
            argv += ["--streams", str(share), "--index", str(index), "--of", str(count)]
            argv += ["--ramp", str(self.args.ramp), "--events", str(self.events)]
            argv += ["--rate", str(self.rate), "--slow", str(self.args.slow), "--out", str(out)]
            procs.append(subprocess.Popen(argv, cwd=REPO))
        return procs

    def read(
        self,
        port: int,
        path: str,
        key: str,
        model: str,
        streams: int,
        *,
        events: int,
        ramp: float,
        tag: str,
    ) -> None:
        body = self.workdir / f"body-{tag}.json"
        body.write_bytes(request_body(model, events))
        out = self.workdir / f"{tag}.json"
        argv = [sys.executable, "-m", "benchmarks.paced_reader", "--port", str(port)]
        argv += ["--path", path, "--key", key, "--body", str(body), "--streams", str(streams)]
        argv += ["--ramp", str(ramp), "--events", str(events), "--rate", str(self.rate)]
        argv += ["--out", str(out)]
        subprocess.run(argv, cwd=REPO, check=True)
        bad = [s for s in orjson.loads(out.read_bytes())["streams"] if s["error"] is not None]
        if bad:
            raise RuntimeError(f"{tag}: {len(bad)} streams failed, e.g. {bad[0]['error']}")

    def collect(self, streams: int) -> tuple[dict[str, Any], tuple[float, float]]:
        """What the readers saw in the window, and the window (monotonic seconds)."""
        delays, gaps = array("i"), array("i")
        summaries: list[dict[str, Any]] = []
        windows = []
        for index in range(max(1, min(self.args.readers, streams))):
            out = self.workdir / f"reader-{index}.json"
            delays.frombytes(Path(str(out) + ".delays").read_bytes())
            gaps.frombytes(Path(str(out) + ".gaps").read_bytes())
            seen = orjson.loads(out.read_bytes())
            summaries += seen["streams"]
            windows.append(seen["window"])
        window = (max(w[0] for w in windows), min(w[1] for w in windows))
        normal = [s for s in summaries if not s["slow"]]
        slow = [s for s in summaries if s["slow"]]
        failed = [s for s in summaries if s["error"] is not None]
        stall_us = STALL_MS * 1000
        record = {
            "streams": streams,
            "events_per_stream": self.events,
            "window_seconds": round(window[1] - window[0], 2),
            "window_events": sum(s["window_events"] for s in summaries),
            "window_events_expected": round(streams * self.rate * (window[1] - window[0])),
            "delay_ms": percentiles([d / 1000 for d in delays], (50, 90, 99)),
            "gap_ms": percentiles([g / 1000 for g in gaps], (50, 99)),
            "ttft_ms": percentiles(
                [s["ttft_us"] / 1000 for s in normal if s["ttft_us"] is not None], (50, 99)
            ),
            "streams_opened": len(summaries),
            "stalled_streams": sum(1 for s in normal if s["max_gap_us"] > stall_us),
            "failed_streams": len(failed),
            "failures": sorted({str(s["error"])[:200] for s in failed})[:3],
            "slow_streams": len(slow),
        }
        return record, window


def show(r: dict[str, Any]) -> None:
    d, t = r["delay_ms"], r["ttft_ms"]
    line = (
        f"  delay p50 {d.get('p50', 0):7.2f}  p99 {d.get('p99', 0):8.2f}"
        f"  max {d.get('max', 0):8.1f}"
        f" ms; stalled {r['stalled_streams']}, failed {r['failed_streams']}; "
        f"TTFT p50 {t.get('p50', 0):.1f} ms"
    )
    if "proxy_cpu_us_per_event" in r:
        line += (
            f"; CPU {r['proxy_cpu_share'] * 100:.0f}% ({r['proxy_cpu_us_per_event']} µs/event)"
            f"; RSS {r['idle_rss_mib']:.0f}→{r['peak_rss_mib']:.0f} MiB"
            f" ({r.get('rss_kib_per_stream')} KiB/stream)"
        )
    print(line, flush=True)
    for f in r["failures"]:
        print(f"  failure: {f}")


def added(records: list[dict[str, Any]]) -> None:
    """Each proxy record's delay and TTFT minus the direct run's at the same rate and C (or,
    for a C direct was not run at, the nearest C below it, else the smallest)."""
    direct = {
        (r["rate"], r["streams"]): r
        for r in records
        if r.get("scenario") == "direct" and "delay_ms" in r
    }
    for r in records:
        if r.get("scenario") == "direct" or "delay_ms" not in r:
            continue
        levels = sorted(c for rate, c in direct if rate == r["rate"])
        if not levels:
            continue
        below = [c for c in levels if c <= r["streams"]]
        base = direct[(r["rate"], below[-1] if below else levels[0])]
        r["direct_streams_compared"] = base["streams"]
        r["added_delay_ms"] = {
            k: round(r["delay_ms"][k] - base["delay_ms"][k], 2)
            for k in ("p50", "p99", "max")
            if k in r["delay_ms"] and k in base["delay_ms"]
        }
        if "p50" in r["ttft_ms"] and "p50" in base["ttft_ms"]:
            r["added_ttft_ms"] = round(r["ttft_ms"]["p50"] - base["ttft_ms"]["p50"], 2)


def delivered(r: dict[str, Any]) -> float:
    """The share of the events the window should have held that arrived in it."""
    expected = r.get("window_events_expected") or 0
    return r["window_events"] / expected if expected else 0.0


def knee(records: list[dict[str, Any]], scenario: str, rate: float) -> int | None:
    """The largest C at which the scenario kept up (≥ 97 % of the window's events arrived in
    it), no stream stalled or failed, and p99 added delay stayed within target (direct: p99
    delay itself)."""
    best = None
    for r in sorted(
        (r for r in records if r.get("scenario") == scenario and r.get("rate") == rate),
        key=lambda r: r["streams"],
    ):
        if "delay_ms" not in r:
            continue
        extra = r.get("added_delay_ms", {}).get("p99", r["delay_ms"].get("p99", 0))
        if r["stalled_streams"] or r["failed_streams"] or extra > TARGET_ADDED_P99_MS:
            break
        if delivered(r) < 0.97:  # fell behind: events are late by more than the window shows
            break
        best = r["streams"]
    return best


def markdown(records: list[dict[str, Any]]) -> str:
    head = (
        "| rate | scenario | C | events delivered | delay p50 / p99 / max (ms) | "
        "added p50 / p99 / max (ms) | stalled | failed | TTFT p50 (+added) ms | proxy CPU | "
        "µs/event | RSS idle → peak | KiB/stream |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for r in records:
        if "delay_ms" not in r:
            continue
        d, a = r["delay_ms"], r.get("added_delay_ms")
        t = r["ttft_ms"]

        def f(v: Any, spec: str = ".1f") -> str:
            return "-" if v is None else format(v, spec)

        rows.append(
            f"| {r['rate']:g} | {r['scenario']} | {r['streams']} | {delivered(r):.0%} | "
            f"{f(d.get('p50'), '.2f')} / {f(d.get('p99'), '.2f')} / {f(d.get('max'))} | "
            + (
                f"{f(a.get('p50'), '.2f')} / {f(a.get('p99'), '.2f')} / {f(a.get('max'))} | "
                if a
                else "- | "
            )
            + f"{r['stalled_streams']} | {r['failed_streams']} | "
            f"{f(t.get('p50'))}"
            + (f" (+{r['added_ttft_ms']:.1f})" if "added_ttft_ms" in r else "")
            + " | "
            + (
                f"{r['proxy_cpu_share'] * 100:.0f}% | {f(r.get('proxy_cpu_us_per_event'))} | "
                f"{f(r.get('idle_rss_mib'), '.0f')} → {f(r.get('peak_rss_mib'), '.0f')} MiB | "
                f"{f(r.get('rss_kib_per_stream'))} |"
                if "proxy_cpu_share" in r
                else "- | - | - | - |"
            )
        )
    return "\n".join(rows)


def chart(records: list[dict[str, Any]], rates: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rates) + 1, figsize=(5 * (len(rates) + 1), 4))
    colours = {"direct": "#888888", "gateway-full": "#1f77b4", "litellm": "#d62728"}
    for ax, rate in zip(axes, rates, strict=False):
        for name in dict.fromkeys(r.get("scenario") for r in records):
            rows = sorted(
                (
                    r
                    for r in records
                    if r.get("scenario") == name and r.get("rate") == rate and "delay_ms" in r
                ),
                key=lambda r: r["streams"],
            )
            if not rows:
                continue
            xs = [r["streams"] for r in rows]
            ys = [max(r["delay_ms"].get("p99", 0), 0.05) for r in rows]
            colour = colours.get(str(name))
            ax.plot(xs, ys, "-", label=str(name), color=colour)
            for x, y, r in zip(xs, ys, rows, strict=True):
                behind = delivered(r) < 0.97  # hollow: events were left waiting upstream
                ax.plot(x, y, "o", color=colour, markerfacecolor="white" if behind else colour)
        ax.axhline(TARGET_ADDED_P99_MS, ls="--", lw=0.8, color="black")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("p99 event delay, ms (upstream send → reader)")
        ax.set_title(f"{rate:g} events/s per stream (hollow: fell behind)")
        ax.legend()
    ax = axes[-1]
    for name in ("gateway-full", "litellm"):
        rows = sorted(
            (r for r in records if r.get("scenario") == name and "rss_kib_per_stream" in r),
            key=lambda r: (r["rate"], r["streams"]),
        )
        for rate in rates:
            pts = [r for r in rows if r["rate"] == rate]
            if pts:
                ax.plot(
                    [r["streams"] for r in pts],
                    [r["rss_kib_per_stream"] for r in pts],
                    "o-",
                    label=f"{name}, {rate:g}/s",
                    color=colours.get(name),
                    alpha=1.0 if rate == rates[0] else 0.5,
                )
    ax.axhline(64, ls="--", lw=0.8, color="black")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("RSS per open stream, KiB")
    ax.set_title("memory per stream")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_cpus, proxy_cpus = cpu_sets(not args.no_pin)
    if load_cpus is not None:  # the readers inherit it
        os.sched_setaffinity(0, {int(c) for c in load_cpus.split(",")})
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-paced-"))
    print(f"logs: {workdir}; pinning: load+upstream {load_cpus}, proxy {proxy_cpus}")
    records: list[dict[str, Any]] = []
    began = time.monotonic()
    for rate in args.rate_list:
        run = PacedRun(args, rate, workdir)
        try:
            for name in args.scenario_list:
                for streams in args.litellm_list if name == "litellm" else args.stream_list:
                    record = run.measure(name, streams)
                    if record is None or "skipped" in record:
                        break
                    records.append(record)
        finally:
            run.stop()
    added(records)
    table = markdown(records)
    knees: dict[str, int | None] = {
        f"{name}@{rate:g}": knee(records, name, rate)
        for rate in args.rate_list
        for name in args.scenario_list
    }
    print("\n" + table + "\n")
    print("knee (largest C with no stall and p99 added ≤ 10 ms):", knees)
    out = results_file(args.output, "paced-")
    result = {
        **run_facts(args, began),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "records": records,
        "knees": knees,
        "markdown": table,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")
    if args.chart:
        chart(records, args.rate_list, args.chart)
        print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
