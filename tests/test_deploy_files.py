"""The deployment files (Dockerfile, docker-compose.yml, deploy/) read as specifications.

No container engine runs here, so the image is never built: these tests check what can be
checked without one — the compose file's structure, that the config it mounts is valid, that
the image runs as a non-root user, and that nginx accepts its configuration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import GatewayConfig, load_config_file

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "llm-gateway"
GATEWAYS = ("gateway-1", "gateway-2")
# A required variable in the config: ${NAME}, not ${NAME:-default}.
REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, args = line.partition(" ")
            instructions.append((name.upper(), args.strip()))
    return instructions


def mounted_config(service: dict[str, Any]) -> Path:
    """The file in this repository the service mounts as its $GATEWAY_CONFIG."""
    target = service["environment"]["GATEWAY_CONFIG"]
    volumes: list[str] = service["volumes"]
    for volume in volumes:
        source, mount, *_ = volume.split(":")
        if mount == target:
            return ROOT / source
    raise AssertionError(f"nothing is mounted at GATEWAY_CONFIG={target}")


# -- docker-compose.yml ----------------------------------------------------------------------
def test_compose_runs_two_replicas_behind_a_balancer_with_postgres_and_redis(compose):
    assert set(compose["services"]) == {*GATEWAYS, "lb", "postgres", "redis"}
    published = {name for name, s in compose["services"].items() if s.get("ports")}
    assert published == {"lb"}  # callers reach the replicas only through the balancer


def test_every_compose_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD", f"{name} has no exec-form healthcheck"


def test_replicas_start_after_their_databases_are_healthy_and_the_balancer_after_them(compose):
    services = compose["services"]
    for name in GATEWAYS:
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert "/health/ready" in " ".join(services[name]["healthcheck"]["test"])
    assert services["lb"]["depends_on"] == {
        name: {"condition": "service_healthy"} for name in GATEWAYS
    }


def test_replicas_run_one_image_and_one_config(compose):
    first, second = (compose["services"][name] for name in GATEWAYS)
    assert first == second
    assert first["build"] == "."
    assert mounted_config(first) == ROOT / "deploy" / "config.yaml"


def test_replicas_outlive_the_gateways_own_shutdown_timeouts(compose, deploy_config):
    config = deploy_config
    grace = compose["services"]["gateway-1"]["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > config.server.shutdown_timeout + config.ledger.shutdown_timeout


# -- deploy/config.yaml ----------------------------------------------------------------------
def dummy_secrets(compose: dict[str, Any]) -> dict[str, str]:
    """A stand-in value for each variable compose passes to the replicas from .env."""
    environment = compose["services"]["gateway-1"]["environment"]
    return {name: f"dummy-{name.lower()}" for name in environment if name != "GATEWAY_CONFIG"}


@pytest.fixture
def deploy_config(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> GatewayConfig:
    """deploy/config.yaml as the replicas read it, with stand-ins for the secrets."""
    for name, value in dummy_secrets(compose).items():
        monkeypatch.setenv(name, value)
    return load_config_file(ROOT / "deploy" / "config.yaml")


def test_every_variable_the_config_requires_is_passed_by_compose(compose):
    text = (ROOT / "deploy" / "config.yaml").read_text()
    uncommented = re.sub(r"(^|\s)#.*", "", text)
    required = set(REQUIRED_VAR.findall(uncommented))
    assert required  # the secrets are variables, not text in the file
    assert required <= set(compose["services"]["gateway-1"]["environment"])


def test_mounted_config_passes_config_check_with_its_variables_set(compose, tmp_path):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "POSTGRES_", "REDIS_"))
    }
    env.update(dummy_secrets(compose))
    config = mounted_config(compose["services"]["gateway-1"])
    checked = subprocess.run(
        [str(CLI), "config", "check", str(config)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert "OK" in checked.stdout
    assert "dummy-" not in checked.stdout + checked.stderr  # no secret is echoed


def test_mounted_config_shares_ledger_limits_and_circuits_between_replicas(deploy_config):
    config = deploy_config
    assert config.ledger.url.startswith("postgresql+asyncpg://")
    assert config.limits.backend == "redis"
    assert config.redis is not None  # circuits are shared whenever redis is configured
    assert config.server.workers == 1


# -- Dockerfile ----------------------------------------------------------------------------
def test_image_is_built_in_two_stages_from_python_slim():
    stages = [args for name, args in dockerfile_instructions() if name == "FROM"]
    assert len(stages) == 2
    assert all("python:${PYTHON_VERSION}-slim" in args for args in stages)
    assert "[dev]" not in (ROOT / "Dockerfile").read_text()


def test_image_runs_as_a_numeric_non_root_user():
    users = [args for name, args in dockerfile_instructions() if name == "USER"]
    assert users, "the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_image_serves_on_its_exposed_port_and_checks_health_there():
    instructions = dict(dockerfile_instructions())
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    assert entrypoint[:2] == ["llm-gateway", "serve"]
    port = entrypoint[entrypoint.index("--port") + 1]
    assert entrypoint[entrypoint.index("--host") + 1] == "0.0.0.0"
    assert instructions["EXPOSE"] == port
    health = instructions["HEALTHCHECK"]
    assert f"http://127.0.0.1:{port}/health/live" in health
    assert "curl" not in health  # python:slim has none


def test_build_context_holds_what_the_dockerfile_copies():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored
    sources = [
        source
        for name, args in dockerfile_instructions()
        if name == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert f"!{source}" in ignored or f"!{source}/" in ignored, source


# -- deploy/nginx.conf ---------------------------------------------------------------------
def test_balancer_forwards_to_both_replicas_unbuffered_with_long_timeouts():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.findall(r"server (gateway-\d):4000", conf) == list(GATEWAYS)
    assert re.search(r"^\s*proxy_buffering off;", conf, re.MULTILINE)
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert read_timeout and int(read_timeout.group(1)) > 600  # routing.timeouts.total


def test_nginx_accepts_the_balancer_config(tmp_path):
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed")
    # The replicas' names resolve only inside compose's network: point them at 127.0.0.1.
    conf = re.sub(r"gateway-\d:4000", "127.0.0.1:4000", (ROOT / "deploy/nginx.conf").read_text())
    (tmp_path / "nginx.conf").write_text(conf)
    checked = subprocess.run(
        [
            nginx,
            "-t",
            "-c",
            str(tmp_path / "nginx.conf"),
            "-p",
            str(tmp_path),
            "-e",
            "/dev/stderr",
            "-g",
            f"pid {tmp_path}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr


# -- docs/deploy.md's Kubernetes example ---------------------------------------------------
def kubernetes_example() -> dict[str, Any]:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.DOTALL)
    manifests = [yaml.safe_load(b) for b in blocks if "kind: Deployment" in b]
    assert len(manifests) == 1
    manifest: dict[str, Any] = manifests[0]
    return manifest


def test_kubernetes_example_probes_the_health_endpoints_on_the_images_port(deploy_config):
    pod = kubernetes_example()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    exposed = dict(dockerfile_instructions())["EXPOSE"]
    assert container["ports"] == [{"name": "http", "containerPort": int(exposed)}]
    uid = next(args for name, args in reversed(dockerfile_instructions()) if name == "USER")
    assert pod["securityContext"]["runAsUser"] == int(uid.split(":")[0])


def test_kubernetes_example_waits_for_shutdown_and_the_ledger_before_killing(deploy_config):
    pod = kubernetes_example()["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = (
        pre_stop + deploy_config.server.shutdown_timeout + deploy_config.ledger.shutdown_timeout
    )
    assert pod["terminationGracePeriodSeconds"] > needed
