"""The package's shape as users meet it: a thin remote client, and the old import paths kept
for one release. (The layers themselves are checked by ``lint-imports`` in ``make test``.)"""

from __future__ import annotations

import subprocess
import sys

import gateway
import gateway.client
import gateway.library

HEAVY = (
    "sqlalchemy",
    "aiohttp",
    "tenacity",
    "alembic",
    "redis",
    "yaml",
    "fastapi",
    "uvicorn",
    "gateway.engine",
    "gateway.call",
    "gateway.ledger.ledger",
    "gateway.routing",
    "gateway.transport",
)


def test_importing_the_remote_client_loads_no_engine_database_or_upstream_client() -> None:
    code = (
        "import sys\n"
        "from gateway import AsyncGatewayClient, GatewayClient, GatewayError, GatewayFacts\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == ""


def test_the_in_process_gateway_loads_the_engine_when_asked_for() -> None:
    code = "import sys\nfrom gateway import Gateway\nprint('gateway.engine' in sys.modules)\n"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == "True"


def test_old_import_paths_name_the_same_objects() -> None:
    assert gateway.client.GatewayClient is gateway.GatewayClient
    assert gateway.client.AsyncGatewayClient is gateway.AsyncGatewayClient
    assert gateway.library.Gateway is gateway.Gateway
    assert gateway.library.AsyncGateway is gateway.AsyncGateway
    assert gateway.CallInfo is gateway.Call


def test_an_unknown_public_name_is_an_attribute_error() -> None:
    try:
        gateway.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("gateway.NoSuchThing resolved")
