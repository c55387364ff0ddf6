"""Run llm-gateway's proxy with a chosen transport, event loop and HTTP parser.

``llm-gateway serve`` always uses the default transport (aiohttp) and lets uvicorn pick the
fastest loop and parser it has; this launcher builds the same app around an Engine with an
injected transport, so the variants can be measured against each other:

    python -m benchmarks.gateway_server --config gw.yaml --port 4000 --transport httpx
"""

from __future__ import annotations

import argparse

import uvicorn

from gateway.config import load_config_file
from gateway.engine import Engine
from gateway.server import create_app
from gateway.transport import AiohttpTransport, HttpxTransport, Transport


def build_transport(name: str) -> Transport:
    if name == "httpx":
        return HttpxTransport()
    return AiohttpTransport()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--transport", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--http", choices=("httptools", "h11"), default="httptools")
    args = parser.parse_args()

    engine = Engine(load_config_file(args.config), transport=build_transport(args.transport))
    app = create_app(engine=engine, settle_gc=True)
    print(f"transport={args.transport} loop={args.loop} http={args.http}", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop=args.loop,
        http=args.http,
        access_log=False,
        proxy_headers=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
