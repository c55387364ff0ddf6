"""Memory held for clients that open a stream and read nothing: the proxy's RSS before and
after N such clients, and how much of each upstream answer it pulled in meanwhile.

The upstream streams a long answer (``--answer-mib`` of SSE, no usage, so the gateway must
estimate it offline) as fast as the gateway reads it; each client sends one streaming request
and then never reads. Once the upstream's writes have stopped moving, the gateway's RSS and
the bytes each upstream stream got out are reported:

    python -m benchmarks.slow_readers --clients 200 --answer-mib 8
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from benchmarks.processes import Process, free_port
from tests.emulators.long_stream import LongStreamUpstream, varied_text


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def read_one_answer(port: int) -> None:
    """A whole short stream, read to its end: the tokenizer is loaded after this."""
    body = {
        "model": "long",
        "stream": True,
        "max_tokens": 200_000,
        "messages": [{"role": "user", "content": "warm up"}],
    }
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
        for _ in r.iter_bytes():
            pass


def open_silent_client(port: int) -> socket.socket:
    """A client that sends one streaming request and never reads its answer."""
    body = orjson.dumps(
        {"model": "long", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def measure(args: argparse.Namespace) -> dict[str, object]:
    upstream = LongStreamUpstream(varied_text(60_000), int(args.answer_mib * 2**20))
    upstream.__enter__()
    up_port = upstream.port
    work = Path(tempfile.mkdtemp(prefix="slow-readers-"))
    config = {
        "ledger": {"enabled": False},
        "providers": {
            "up": {"type": "openai", "api_key": "x", "base_url": f"http://127.0.0.1:{up_port}/v1"}
        },
        "models": {"long": {"deployments": [{"provider": "up", "model": "gpt-4o"}]}},
        "routing": {"timeouts": {"idle": 600, "total": 600}},
    }
    (work / "gw.json").write_text(json.dumps(config))
    port = free_port()
    gateway = Process(
        "gateway",
        [
            sys.executable,
            "-m",
            "benchmarks.gateway_server",
            "--config",
            str(work / "gw.json"),
            "--port",
            str(port),
        ],
        work,
    )
    try:
        gateway.wait_port(port, 30)
        read_one_answer(port)
        time.sleep(1.0)
        before = rss_mib(gateway.pid)
        clients = [open_silent_client(port) for _ in range(args.clients)]
        deadline = time.monotonic() + 120
        while len(upstream.written) <= args.clients and time.monotonic() < deadline:
            time.sleep(0.25)  # until every stream has reached the upstream
        last, still = -1, 0.0
        while still < args.settle:  # until the upstream's writes stop moving
            time.sleep(0.25)
            total = sum(upstream.written)
            still = still + 0.25 if total == last else 0.0
            last = total
        after = rss_mib(gateway.pid)
        written = sorted(upstream.written)
        for sock in clients:
            sock.close()
        return {
            "clients": args.clients,
            "answer_mib": args.answer_mib,
            "rss_before_mib": round(before, 1),
            "rss_after_mib": round(after, 1),
            "rss_per_reader_mib": round((after - before) / args.clients, 3),
            "upstream_mib_read_median": round(written[len(written) // 2] / 2**20, 2),
            "upstream_mib_read_max": round(written[-1] / 2**20, 2),
            "streams": len(written),
        }
    finally:
        gateway.stop()
        upstream.__exit__()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--answer-mib", type=float, default=8.0)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds without progress")
    started = time.monotonic()
    result = measure(parser.parse_args())
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
