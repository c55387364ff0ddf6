"""``llm-gateway logs`` against a real gateway: its requests one per line, failed attempts
under them, and ``--follow`` printing new requests as they arrive."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from queue import Empty, Queue

from tests.conftest import GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.openai_api import OpenAIEmulator
from tests.keys_helpers import MASTER_KEY, chat, gateway_config, server_root

CLI = Path(sys.executable).parent / "llm-gateway"


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out["GATEWAY_MASTER_KEY"] = MASTER_KEY
    return out


def test_logs_prints_each_request_and_its_failed_attempts(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    config = gateway_config(openai_emu.url, tmp_path / "ledger.db")
    config["routing"] = {"retries": {"attempts_per_deployment": 2}, "circuit": {"enabled": False}}
    base = start_gateway(config)
    openai_emu.fail_next(Fault(status=503, body=b'{"error": {"message": "overloaded"}}'))
    retried = chat(base, MASTER_KEY)
    assert retried.status_code == 200
    plain = chat(base, MASTER_KEY, model="gpt-4o-mini")

    result = subprocess.run(
        [str(CLI), "logs", "--url", server_root(base), "--status", "ok"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert retried.headers["x-request-id"] in lines[0] and "2 att" in lines[0]
    assert lines[1].strip().startswith("attempt 1: openai/gpt-4o 503")
    assert plain.headers["x-request-id"] in lines[2] and "gpt-4o-mini" in lines[2]
    assert len(lines) == 3


def test_logs_follow_prints_requests_as_they_arrive(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    base = start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db"))
    first = chat(base, MASTER_KEY)
    proc = subprocess.Popen(
        [str(CLI), "logs", "--url", server_root(base), "--follow", "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env(),
    )
    lines: Queue[str] = Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for text in stdout:
            lines.put(text)

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert first.headers["x-request-id"] in lines.get(timeout=30)
        second = chat(base, MASTER_KEY, model="gpt-4o-mini")
        assert second.headers["x-request-id"] in lines.get(timeout=30)
        try:
            extra = lines.get(timeout=0.5)
        except Empty:
            extra = None
        assert extra is None  # nothing printed twice
    finally:
        proc.terminate()
        proc.wait(timeout=10)
