"""``llm-gateway serve`` and ``make serve`` as a new user meets them: what gets installed, what
start-up says, and serving a real provider's model without writing a config file."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import ServerThread, free_port

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "llm-gateway"
BANNER = re.compile(rb"llm-gateway serving \d+ models on http://127\.0\.0\.1:(\d+)/v1")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OPENAI_"))}
    env.update(extra)
    return env


def dry_run(target: str, venv: Path) -> str:
    """The commands ``make <target>`` would run on a machine without ``venv``."""
    return subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def test_make_serve_installs_no_dev_extras_on_a_fresh_machine(tmp_path: Path) -> None:
    commands = dry_run("serve", tmp_path / "fresh")
    installs = [line for line in commands.splitlines() if "pip install" in line]
    assert any(re.search(r"pip install (--quiet )?-e \.$", line) for line in installs), installs
    assert not any("[" in line for line in installs), installs  # no extras at all
    assert "llm-gateway serve" in commands


def test_make_test_still_installs_the_dev_extras_on_a_fresh_machine(tmp_path: Path) -> None:
    commands = dry_run("test", tmp_path / "fresh")
    assert "pip install --quiet -e '.[dev]'" in commands
    assert "pytest" in commands


@contextmanager
def serve(*args: str, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``llm-gateway serve`` with ``args`` on a free port; yields the process and its port once
    its banner is printed (stdout), and always stops it."""
    port = free_port()
    proc = subprocess.Popen(
        [str(CLI), "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the banner (or the end of output)
        match = BANNER.match(line)
        assert match is not None, f"exit {proc.poll()}, first line {line!r}"
        assert int(match.group(1)) == port
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_the_serving_banner_comes_only_once_the_port_answers() -> None:
    with serve(env=clean_env()) as (_, port):
        # No polling: when the banner is out, the gateway already accepts and answers.
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "mock-echo", "messages": [{"role": "user", "content": "first"}]},
            timeout=10,
        )
        assert answer.json()["choices"][0]["message"]["content"] == "first"


def test_a_port_in_use_is_one_plain_line_and_exit_status_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(CLI), "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
    assert result.returncode == 1
    assert result.stdout == ""  # no banner for a server that never served
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0]
    assert "--port" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def openai_upstream() -> Iterator[str]:
    with ServerThread(OpenAIEmulator().app) as upstream:
        yield upstream.url


def test_serve_model_answers_through_the_provider_with_its_env_key(openai_upstream: str) -> None:
    env = clean_env(OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=openai_upstream + "/v1")
    with serve("--model", "openai/gpt-4o-mini", env=env) as (_, port):
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=10
        )
        assert [m.id for m in client.models.list().data] == ["gpt-4o-mini"]
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
        assert completion.choices[0].message.content
        assert completion.model.startswith("gpt-4o-mini")


def test_serve_model_without_the_provider_key_names_the_variable() -> None:
    result = subprocess.run(
        [str(CLI), "serve", "--model", "mistral/mistral-small-latest", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in clean_env().items() if k != "MISTRAL_API_KEY"},
    )
    assert result.returncode == 2
    assert "MISTRAL_API_KEY" in result.stderr
    assert result.stdout == ""


def test_serve_model_refuses_an_unknown_provider() -> None:
    result = subprocess.run(
        [str(CLI), "serve", "--model", "acme/big-model"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert result.returncode == 2
    assert "openai/gpt-4o-mini" in result.stderr


def test_heavy_optional_parts_are_not_loaded_by_a_default_gateway(tmp_path: Path) -> None:
    """Tracing, the Redis and PostgreSQL drivers and the tokenizer tables are imported only
    by a config that uses them: not to start and answer with the defaults."""
    script = """
import sys
from fastapi.testclient import TestClient
from gateway.server.app import create_app
with TestClient(create_app()) as client:
    answer = client.post("/v1/chat/completions", json={"model": "mock-echo",
                         "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text
heavy = ("redis", "asyncpg", "bpe_openai", "mistral_common", "sentencepiece",
         "gateway.observability.tracing")
print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
