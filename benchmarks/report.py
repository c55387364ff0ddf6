"""Turning run records into the markdown tables printed at the end of a run."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def summarize(records: list[Record], baseline: str | None = None) -> list[Record]:
    """One row per (scenario, mode, connections): the median over rounds of each number.

    ``ratio`` is req/s relative to ``baseline`` measured in the same round, the median over
    rounds: on a shared VM whose speed drifts, paired ratios are steadier than absolutes.
    """
    groups: dict[tuple[str, str, int], list[Record]] = {}
    base_rps: dict[tuple[int, str, int], float] = {}
    for r in records:
        groups.setdefault((r["scenario"], r["mode"], r["connections"]), []).append(r)
        if r["scenario"] == baseline:
            base_rps[(r["round"], r["mode"], r["connections"])] = r["load"]["rps"]
    rows = []
    for (scenario, mode, connections), runs in groups.items():
        loads = [r["load"] for r in runs]
        rps = [ld["rps"] for ld in loads]
        ratios = [
            r["load"]["rps"] / base_rps[key]
            for r in runs
            if base_rps.get(key := (r["round"], mode, connections))
        ]
        rows.append(
            {
                "scenario": scenario,
                "mode": mode,
                "connections": connections,
                "rounds": len(runs),
                "rps": _median(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "ratio": _median(ratios),
                "p50": _median(ld["latency_ms"].get("p50") for ld in loads),
                "p99": _median(ld["latency_ms"].get("p99") for ld in loads),
                "errors": sum(sum(ld["errors"].values()) for ld in loads),
                "cpu_ms": _median(r.get("proxy_cpu_ms_per_request") for r in runs),
                "hdr_p50": _median(ld["overhead_ms"].get("p50") for ld in loads),
                "hdr_p99": _median(ld["overhead_ms"].get("p99") for ld in loads),
                "idle_p50": _median(r["idle"]["latency_ms"].get("p50") for r in runs),
                "idle_hdr_p50": _median(r["idle"]["overhead_ms"].get("p50") for r in runs),
                "idle_hdr_p99": _median(r["idle"]["overhead_ms"].get("p99") for r in runs),
                "idle_ttfb_p50": _median(
                    r["idle"].get("first_byte_ms", {}).get("p50") for r in runs
                ),
                "peak_rss_mib": max(
                    (r["proxy_peak_rss_mib"] for r in runs if r.get("proxy_peak_rss_mib")),
                    default=None,
                ),
            }
        )
    return rows


def markdown(rows: list[Record], baseline: str | None = None) -> str:
    """Throughput table, then the overhead table (differences against ``direct``)."""
    direct = {(r["mode"], r["connections"]): r for r in rows if r["scenario"] == "direct"}
    multi = any(r["rounds"] > 1 for r in rows)
    ratio = baseline is not None and any(r["ratio"] is not None for r in rows)
    lines = [
        "| scenario | mode | conns | req/s | p50 ms | p99 ms | errors | proxy CPU ms/req |"
        + (f" req/s ÷ {baseline} |" if ratio else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if ratio else ""),
    ]
    for r in rows:
        rps = _fmt(r["rps"], 0)
        if multi and r["rounds"] > 1:
            rps += f" ({r['rps_min']:,.0f}..{r['rps_max']:,.0f})"
        lines.append(
            f"| {r['scenario']} | {r['mode']} | {r['connections']} | {rps} | {_fmt(r['p50'])} "
            f"| {_fmt(r['p99'])} | {r['errors']} | {_fmt(r['cpu_ms'], 3)} |"
            + (f" {_fmt(r['ratio'])} |" if ratio else "")
        )
    lines += [
        "",
        "| scenario | mode | conns | Δp50 vs direct (load) ms | idle p50 ms | Δ idle p50 ms "
        "| x-gateway-overhead-ms p50 / p99 (load) | x-gateway-overhead-ms p50 / p99 (idle) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["scenario"] == "direct":
            continue
        base = direct.get((r["mode"], r["connections"]))
        d_load = r["p50"] - base["p50"] if base and r["p50"] is not None else None
        d_idle = (
            r["idle_p50"] - base["idle_p50"]
            if base and r["idle_p50"] is not None and base["idle_p50"] is not None
            else None
        )
        hdr_load = (
            f"{_fmt(r['hdr_p50'])} / {_fmt(r['hdr_p99'])}" if r["hdr_p50"] is not None else "n/a"
        )
        hdr_idle = (
            f"{_fmt(r['idle_hdr_p50'])} / {_fmt(r['idle_hdr_p99'])}"
            if r["idle_hdr_p50"] is not None
            else "n/a"
        )
        lines.append(
            f"| {r['scenario']} | {r['mode']} | {r['connections']} | {_fmt(d_load)} "
            f"| {_fmt(r['idle_p50'])} | {_fmt(d_idle)} | {hdr_load} | {hdr_idle} |"
        )
    return "\n".join(lines)


# The Speed issue's scenarios, in the order the pipeline table and the chart show them.
PIPELINE = ("direct", "floor", "gateway", "gateway-full", "gateway-full-2w", "litellm")


def _row(rows: list[Record], scenario: str, mode: str, conns: int) -> Record | None:
    return next(
        (
            r
            for r in rows
            if (r["scenario"], r["mode"], r["connections"]) == (scenario, mode, conns)
        ),
        None,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _added(rows: list[Record], scenario: str, mode: str, key: str) -> float | None:
    """``key`` (a latency at one connection) through ``scenario`` minus the same direct."""
    r, d = _row(rows, scenario, mode, 1), _row(rows, "direct", mode, 1)
    if r is None or d is None or r.get(key) is None or d.get(key) is None:
        return None
    return float(r[key] - d[key])


# The modes the tables and the chart show, in this order.
MODE_ORDER = ("chat", "stream", "responses", "responses-native")


def pipeline_markdown(rows: list[Record], busy: int = 32) -> str:
    """The "full pipeline vs the floor" table and the Speed issue's targets, met or not."""
    modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in rows)]
    lines = [
        f"| scenario | mode | req/s c={busy} | added p50 / p99 c=1 ms | "
        f"CPU ms per 1000 req c={busy} | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scenario in PIPELINE:
        for mode in modes:
            r = _row(rows, scenario, mode, busy)
            if r is None:
                continue
            one = _row(rows, scenario, mode, 1)
            d = _row(rows, "direct", mode, 1)
            added = "n/a"
            if scenario != "direct" and one and d:
                added = f"{_fmt(one['p50'] - d['p50'])} / {_fmt(one['p99'] - d['p99'])}"
            cpu = r["cpu_ms"] * 1000 if r["cpu_ms"] is not None else None
            lines.append(
                f"| {scenario} | {mode} | {_fmt(r['rps'], 0)} | {added} | {_fmt(cpu, 0)} "
                f"| {_fmt(r['peak_rss_mib'], 1)} |"
            )

    def rps(scenario: str, mode: str) -> float | None:
        r = _row(rows, scenario, mode, busy)
        return r["rps"] if r else None

    checks: list[tuple[str, float | None, str, bool | None]] = []
    for mode in modes:
        v = _ratio(rps("gateway-full", mode), rps("litellm", mode))
        checks.append((f"{mode} req/s c={busy} ÷ LiteLLM", v, "≥ 25", v >= 25 if v else None))
        v = _ratio(rps("gateway-full", mode), rps("floor", mode))
        checks.append((f"{mode} req/s c={busy} ÷ floor", v, "≥ 0.70", v >= 0.7 if v else None))
    v = _added(rows, "gateway-full", "chat", "p50")
    checks.append(("chat added p50 at c=1 (ms)", v, "≤ 0.5", v <= 0.5 if v is not None else None))
    v = _added(rows, "gateway-full", "stream", "idle_ttfb_p50")
    checks.append(
        ("stream added TTFT p50, idle (ms)", v, "≤ 1", v <= 1.0 if v is not None else None)
    )
    peaks = [r["peak_rss_mib"] for r in rows if r["scenario"] == "gateway-full"]
    v = max((p for p in peaks if p is not None), default=None)
    checks.append(
        (
            "peak RSS per worker (MB)",
            v and v * 1.048576,
            "≤ 150",
            v * 1.048576 <= 150 if v else None,
        )
    )
    for mode in modes:
        v = _ratio(rps("gateway-full-2w", mode), rps("gateway-full", mode))
        checks.append((f"{mode} 2 workers ÷ 1 worker", v, "≥ 1.6", v >= 1.6 if v else None))
    lines += ["", "| target (gateway-full) | measured | goal | met? |", "|---|---:|---:|---|"]
    for label, value, goal, ok in checks:
        verdict = "n/a" if ok is None else ("met" if ok else "**not met**")
        lines.append(f"| {label} | {_fmt(value)} | {goal} | {verdict} |")
    return "\n".join(lines)


def chart(rows: list[Record], path: Path, busy: int = 32) -> None:
    """Two bar charts (log scale): req/s at ``busy`` connections, and p50 added at one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in rows)]
    present = [s for s in PIPELINE if any(r["scenario"] == s for r in rows)]
    present += sorted({r["scenario"] for r in rows} - set(present))
    proxies = [s for s in present if s != "direct"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    width = 0.8 / max(1, len(modes))
    panels = (
        (left, present, f"req/s at {busy} connections (log)", "{:,.0f}"),
        (right, proxies, "p50 added over direct at 1 connection, ms (log)", "{:.2f}"),
    )
    for ax, names, title, label in panels:
        for i, mode in enumerate(modes):
            xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(names))]
            if ax is left:
                values = [(_row(rows, s, mode, busy) or {}).get("rps") or 0.0 for s in names]
            else:
                values = [max(_added(rows, s, mode, "p50") or 0.0, 0.0) for s in names]
            bars = ax.bar(xs, values, width, label=mode)
            ax.bar_label(bars, labels=[label.format(v) if v else "" for v in values], fontsize=6)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def results_file(given: Path | None, prefix: str = "") -> Path:
    """Where a run's JSON goes: ``given``, else benchmarks/results/<prefix><UTC time>.json."""
    out = given or Path(__file__).resolve().parent / "results" / (
        prefix + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ".json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def run_facts(args: argparse.Namespace, began: float) -> dict[str, Any]:
    """When a run finished, how long it took, and its settings (lists parsed from them
    left out), for the head of its JSON."""
    return {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - began, 1),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not k.endswith("_list")
        },
    }
