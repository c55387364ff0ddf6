"""The installed ``llm-gateway`` console script, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.harness import free_port

CLI = Path(sys.executable).parent / "llm-gateway"

GOOD = """\
providers:
  mock: {type: mock}
  terse: {type: mock, completion_tokens: 3}
models:
  chat:
    deployments:
      - {provider: mock, model: mock-chat}
      - {provider: terse, model: mock-chat}
    fallbacks: [echo]
  echo:
    deployments: [{provider: mock, model: mock-echo}]
"""

BAD = """\
server: {port: abc}
providers:
  mock: {type: mock, colour: red}
  acme: {type: nope, api_key: sk-live-DO-NOT-PRINT}
models:
  chat:
    deployments: [{provider: mock, model: mock-chat}]
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else clean_env(),
    )


def clean_env() -> dict[str, str]:
    """The test process's environment without gateway settings that would change the outcome."""
    env = dict(os.environ)
    env.pop("GATEWAY_CONFIG", None)
    env.pop("GATEWAY_MASTER_KEY", None)
    return env


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def test_console_script_is_installed() -> None:
    assert CLI.exists()


def test_config_check_of_a_good_file_prints_ok_with_counts(good_file: Path) -> None:
    result = run_cli("config", "check", str(good_file))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "2 providers, 2 models, 3 deployments" in result.stdout


def test_config_check_of_a_bad_file_exits_with_status_2(bad_file: Path) -> None:
    assert run_cli("config", "check", str(bad_file)).returncode == 2


def test_config_check_of_a_bad_file_prints_every_problem_with_its_key_path(bad_file: Path) -> None:
    output = run_cli("config", "check", str(bad_file)).stderr
    assert "server.port:" in output
    assert "providers.mock.colour:" in output
    assert "providers.acme.type:" in output


def test_config_check_does_not_print_secrets_from_a_bad_file(bad_file: Path) -> None:
    result = run_cli("config", "check", str(bad_file))
    assert "sk-live-DO-NOT-PRINT" not in result.stdout + result.stderr


def test_config_check_of_a_missing_file_names_it_and_exits_with_status_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = run_cli("config", "check", str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr


def test_models_lists_each_model_with_its_deployments_and_fallbacks(good_file: Path) -> None:
    result = run_cli("models", "--config", str(good_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "chat: mock/mock-chat, terse/mock-chat  (fallbacks: echo)",
        "echo: mock/mock-echo",
    ]


def test_models_without_config_lists_the_builtin_mock_models() -> None:
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        "mock-echo",
        "mock-chat",
        "mock-embed",
    ]


def test_models_reads_the_file_named_by_gateway_config(good_file: Path) -> None:
    result = run_cli("models", env={**clean_env(), "GATEWAY_CONFIG": str(good_file)})
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["chat", "echo"]


# --- serve ---------------------------------------------------------------------------------------


def wait_until_live(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    """Poll the liveness endpoint until it answers, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"llm-gateway serve exited with status {proc.returncode}:\n{log.read_text()}"
            )
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(
        f"llm-gateway serve did not answer {url} in {timeout}s:\n{log.read_text()}"
    )


@contextmanager
def serving(folder: Path, config_text: str) -> Iterator[str]:
    """``llm-gateway serve`` of ``config_text`` on a free port; yields its base URL and always
    stops it."""
    config = folder / "gateway.yaml"
    config.write_text(config_text)
    log_path = folder / "serve.log"
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(CLI), "serve", "--config", str(config), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
        try:
            wait_until_live(proc, f"http://127.0.0.1:{port}/health/live", log_path, timeout=30)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("serve"), GOOD) as url:
        yield url


def test_serve_answers_a_chat_completion_through_the_openai_sdk(served: str) -> None:
    client = openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0, timeout=10)
    completion = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello from the cli"}]
    )
    assert completion.choices[0].message.content == "hello from the cli"


def test_serve_uses_the_config_file_it_was_given(served: str) -> None:
    ids = [m["id"] for m in httpx.get(served + "/v1/models", timeout=10).json()["data"]]
    assert ids == ["chat", "echo"]


def test_serve_believes_no_x_forwarded_for_unless_told_to(tmp_path: Path) -> None:
    """Unknown keys are throttled per client address; a forged X-Forwarded-For does not make
    each guess come from a new address (uvicorn's own header handling is off)."""
    db = tmp_path / "ledger.db"
    config = GOOD + (
        f"auth: {{master_key: sk-master-cli, failed_lookups_per_minute: 3}}\n"
        f"ledger: {{url: 'sqlite+aiosqlite:///{db}'}}\n"
    )
    with serving(tmp_path, config) as url:

        def guess(i: int) -> httpx.Response:
            return httpx.post(
                url + "/v1/chat/completions",
                json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
                headers={
                    "authorization": f"Bearer sk-gw-guess{i}",
                    "x-forwarded-for": f"203.0.113.{i}",
                },
                timeout=10,
            )

        assert [guess(i).status_code for i in range(3)] == [401, 401, 401]
        refused = guess(3)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_failed_authentications"
        assert int(refused.headers["retry-after"]) >= 1
