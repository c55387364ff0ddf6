"""Turning run records into the markdown tables printed at the end of a run."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
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
