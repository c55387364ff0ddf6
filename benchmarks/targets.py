"""The systems under test: the upstream itself, llm-gateway (and its variants), LiteLLM.

Each scenario starts its proxy (pinned to the proxy's CPUs), configured with one model per
answer shape pointing at the static upstream, and says where to send each mode's requests.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.payloads import (
    API_KEY,
    BASE_PATHS,
    MASTER_KEY,
    MODELS,
    OPERATIONS,
    UPSTREAM_MODEL,
)
from benchmarks.processes import Process, free_port

REPO = Path(__file__).resolve().parent.parent
EMBED_MODEL = "text-embedding-3-small"


class Skipped(Exception):
    """The scenario cannot run on this machine; the message says why and how to enable it."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    kind: str  # "direct", "floor", "gateway-cli", "gateway", "litellm"
    description: str
    transport: str = "aiohttp"
    loop: str = "uvloop"
    http: str = "httptools"
    full: bool = False  # virtual key + limits, two weighted deployments, SQLite ledger
    workers: int = 1  # more than one: pinned to every core, shared with wrk and nginx
    cache: str | None = None  # the response cache on: "hit" (answers kept) or "miss" (never)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("direct", "direct", "load generator → static upstream (no proxy)"),
        Scenario(
            "floor",
            "floor",
            "bare ASGI + aiohttp pass-through under uvicorn, 1 worker (the Python floor)",
        ),
        Scenario(
            "gateway",
            "gateway-cli",
            "llm-gateway serve (default: aiohttp transport; uvicorn picks uvloop + httptools)",
        ),
        Scenario(
            "gateway-aiohttp",
            "gateway",
            "launcher: AiohttpTransport, uvloop, httptools (same as the CLI)",
        ),
        Scenario(
            "gateway-httpx",
            "gateway",
            "launcher: HttpxTransport, uvloop, httptools",
            transport="httpx",
        ),
        Scenario(
            "gateway-asyncio",
            "gateway",
            "launcher: AiohttpTransport, stdlib asyncio loop, httptools",
            loop="asyncio",
        ),
        Scenario(
            "gateway-h11",
            "gateway",
            "launcher: AiohttpTransport, uvloop, h11 parser",
            http="h11",
        ),
        Scenario(
            "gateway-full",
            "gateway-cli",
            "llm-gateway serve, full pipeline: virtual key (limits admission), two weighted "
            "deployments, pricing, SQLite ledger; 1 worker",
            full=True,
        ),
        Scenario(
            "gateway-full-2w",
            "gateway-cli",
            "gateway-full with server.workers 2, pinned to all cores (shared with wrk + nginx)",
            full=True,
            workers=2,
        ),
        Scenario(
            "gateway-full-cache",
            "gateway-cli",
            "gateway-full with the response cache on (memory): every request after the first "
            "is a hit",
            full=True,
            cache="hit",
        ),
        Scenario(
            "gateway-full-cache-miss",
            "gateway-cli",
            "gateway-full with the response cache on, no answer small enough to keep: every "
            "request is a miss (lookup, then the upstream)",
            full=True,
            cache="miss",
        ),
        Scenario("litellm", "litellm", "LiteLLM proxy (litellm --num_workers 1)"),
    )
}
DEFAULT_SCENARIOS = (
    "direct",
    "gateway",
    "gateway-httpx",
    "gateway-asyncio",
    "gateway-h11",
    "litellm",
)


def stream_model(provider_type: str) -> str:
    """The upstream model streams are asked of: Mistral's for its shape, else OpenAI's."""
    return "mistral-small-latest" if provider_type == "mistral" else UPSTREAM_MODEL


def litellm_binary() -> Path | None:
    """$LITELLM_BIN, else a litellm-venv next to the repository, else litellm on PATH."""
    candidates = [os.environ.get("LITELLM_BIN"), str(REPO.parent / "litellm-venv/bin/litellm")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    found = shutil.which("litellm")
    return Path(found) if found else None


def gateway_config(
    upstream: str,
    port: int,
    *,
    full: bool = False,
    workers: int = 1,
    ledger: str | None = None,
    cache: str | None = None,
    provider_type: str = "openai",
) -> dict[str, Any]:
    """One model per answer shape; ``full``: each with two weighted deployments (3:1, two
    providers, both pointing at the upstream) and the ledger at ``ledger``.
    ``provider_type``: the adapter the stream providers use (``mistral`` for its shape)."""
    provider = {"type": "openai", "api_key": API_KEY}
    providers = {
        "bench-json": {**provider, "base_url": upstream + BASE_PATHS["chat"]},
        "bench-sse": {
            **provider,
            "type": provider_type,
            "base_url": upstream + BASE_PATHS["stream"],
        },
        "bench-native": {
            **provider,
            "base_url": upstream + BASE_PATHS["responses-native"],
            "responses_api": True,
        },
    }
    if full:
        providers["bench-json-b"] = providers["bench-json"]
        providers["bench-sse-b"] = providers["bench-sse"]
        providers["bench-native-b"] = providers["bench-native"]

    def deployments(provider: str, model: str) -> dict[str, Any]:
        if not full:
            return {"deployments": [{"provider": provider, "model": model}]}
        return {
            "deployments": [
                {"provider": provider, "model": model, "weight": 3},
                {"provider": provider + "-b", "model": model, "weight": 1},
            ]
        }

    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "workers": workers},
        "auth": {"master_key": MASTER_KEY},
        "providers": providers,
        "models": {
            MODELS["chat"]: deployments("bench-json", UPSTREAM_MODEL),
            MODELS["stream"]: deployments("bench-sse", stream_model(provider_type)),
            MODELS["embed"]: deployments("bench-json", EMBED_MODEL),
            MODELS["responses-native"]: deployments("bench-native", UPSTREAM_MODEL),
        },
    }
    if ledger:
        config["ledger"] = {"url": ledger}
    if cache is not None:
        # The load's bodies sample (temperature 0.2): the cache is told to keep them anyway.
        config["cache"] = {"enabled": True, "sampled": True}
        if cache == "miss":
            config["cache"]["max_entry_bytes"] = 1
    return config


async def _create_virtual_key(url: str) -> str:
    """Migrate the ledger DB at ``url`` and create a key whose limits never refuse a run."""
    from gateway.keys import KeyStore
    from gateway.ledger.db import create_ledger_engine
    from gateway.ledger.migrate import upgrade

    await upgrade(url)
    engine = create_ledger_engine(url)
    try:
        _, plaintext = await KeyStore(engine).create_key(
            name="bench", rpm=1_000_000_000, tpm=1_000_000_000_000, budget_usd=1_000_000
        )
    finally:
        await engine.dispose()
    return plaintext


def create_virtual_key(db_path: Path) -> str:
    import asyncio

    return asyncio.run(_create_virtual_key(f"sqlite+aiosqlite:///{db_path}"))


def litellm_config(upstream: str, provider_type: str = "openai") -> dict[str, Any]:
    def entry(mode: str, model: str) -> dict[str, Any]:
        kind = provider_type if mode == "stream" else "openai"
        return {
            "model_name": MODELS[mode],
            "litellm_params": {
                "model": f"{kind}/{model}",
                "api_base": upstream + BASE_PATHS[mode],
                "api_key": API_KEY,
            },
        }

    return {
        "model_list": [
            entry("chat", UPSTREAM_MODEL),
            entry("stream", stream_model(provider_type)),
            entry("embed", EMBED_MODEL),
        ],
        "litellm_settings": {"telemetry": False},
        "general_settings": {"master_key": MASTER_KEY},
    }


class RunningTarget:
    """A started scenario: where to send each mode, and the proxy process (if any)."""

    def __init__(
        self,
        scenario: Scenario,
        upstream: str,
        workdir: Path,
        cpus: str | None,
        *,
        provider_type: str = "openai",
    ) -> None:
        self.scenario = scenario
        self.provider_type = provider_type
        self.process: Process | None = None
        self.version = ""
        self.key = MASTER_KEY  # what the load generator sends as its bearer token
        if scenario.kind == "direct":
            self._base: str | None = None
            self._upstream = upstream
            return
        port = free_port()
        self._base = f"http://127.0.0.1:{port}/v1"
        self._upstream = upstream
        log_dir = workdir / scenario.name
        log_dir.mkdir(exist_ok=True)
        bin_dir = Path(sys.executable).parent
        if scenario.workers > 1 and cpus is not None:
            # Every core: left unpinned, the proxy would inherit the harness's core 0.
            cpus = ",".join(str(i) for i in range(os.cpu_count() or 1))
        if scenario.kind == "floor":
            floor = str(Path(__file__).with_name("floor.py"))
            argv = [sys.executable, floor, "--port", str(port), "--upstream", upstream]
            env: dict[str, str] = {}
            timeout = 30.0
        elif scenario.kind == "litellm":
            binary = litellm_binary()
            if binary is None:
                raise Skipped(
                    "LiteLLM not found: create it outside the repo with "
                    "`python3.11 -m venv ../litellm-venv && "
                    "../litellm-venv/bin/pip install 'litellm[proxy]'` (or set LITELLM_BIN)"
                )
            config = log_dir / "litellm.yaml"
            settings = litellm_config(upstream, provider_type)
            config.write_text(yaml.safe_dump(settings, sort_keys=False))
            argv = [str(binary), "--config", str(config), "--host", "127.0.0.1"]
            argv += ["--port", str(port), "--num_workers", "1"]
            env = {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from GitHub at start-up
                "LITELLM_LOG": "ERROR",
            }
            self.version = _litellm_version(binary)
            timeout = 90.0
        else:
            ledger = None
            if scenario.full:
                db = log_dir / "ledger.db"
                db.unlink(missing_ok=True)
                ledger = f"sqlite+aiosqlite:///{db}"
                self.key = create_virtual_key(db)
            settings = gateway_config(
                upstream,
                port,
                full=scenario.full,
                workers=scenario.workers,
                ledger=ledger,
                cache=scenario.cache,
                provider_type=provider_type,
            )
            config = log_dir / "gateway.yaml"
            config.write_text(yaml.safe_dump(settings, sort_keys=False))
            if scenario.kind == "gateway-cli":
                argv = [str(bin_dir / "llm-gateway"), "serve", "--config", str(config)]
                argv += ["--host", "127.0.0.1", "--port", str(port)]
            else:
                # Run by path, from the log dir: `gateway` then resolves like it does for the
                # CLI (PYTHONPATH first, then the installed package), not to the harness's cwd.
                launcher = str(Path(__file__).with_name("gateway_server.py"))
                argv = [sys.executable, launcher, "--config", str(config)]
                argv += ["--port", str(port), "--transport", scenario.transport]
                argv += ["--loop", scenario.loop, "--http", scenario.http]
            env = {}
            timeout = 30.0
        self.process = Process(scenario.name, argv, log_dir, cpus=cpus, env=env, cwd=log_dir)
        try:
            self.process.wait_port(port, timeout)
        except RuntimeError:
            self.process.stop()
            raise

    def url(self, mode: str) -> str:
        if self._base is None:
            return self._upstream + BASE_PATHS[mode] + OPERATIONS[mode]
        if self.scenario.kind == "floor":  # same paths as the upstream, on the floor's port
            return self._base.removesuffix("/v1") + BASE_PATHS[mode] + OPERATIONS[mode]
        return self._base + OPERATIONS[mode]

    def model(self, mode: str) -> str:
        if self._base is None or self.scenario.kind == "floor":
            if mode == "stream":
                return stream_model(self.provider_type)
            return EMBED_MODEL if mode == "embed" else UPSTREAM_MODEL
        return MODELS[mode]

    @property
    def is_gateway(self) -> bool:
        return self.scenario.kind.startswith("gateway")

    def cpu_seconds(self) -> float | None:
        return self.process.cpu_seconds() if self.process else None

    def wait_quiet(self, limit: float = 15.0) -> float | None:
        """Wait until the proxy uses under 2 % of a core over half a second, so work a warm-up
        left behind (a tokenizer loading to bill callers the warm-up's end cut off) is not
        counted in the next measurement; the seconds it took, or None if it never did."""
        if self.process is None:
            return 0.0
        began = time.monotonic()
        last = self.process.cpu_seconds()
        while time.monotonic() - began < limit:
            time.sleep(0.5)
            now = self.process.cpu_seconds()
            if now - last < 0.01:
                return round(time.monotonic() - began, 1)
            last = now
        return None

    def memory(self) -> dict[str, Any] | None:
        """Peak and current RSS (MiB) of each of the proxy's processes, or None (direct)."""
        return self.process.memory() if self.process else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def gateway_source() -> str:
    """Where the proxies will import ``gateway`` from (honours PYTHONPATH, like they do)."""
    import subprocess

    code = "import gateway, os; print(os.path.dirname(os.path.dirname(gateway.__file__)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd="/"
    )
    return out.stdout.strip() or out.stderr.strip()[-200:]


def _litellm_version(binary: Path) -> str:
    import subprocess

    python = binary.parent / "python"
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return out.stdout.strip()
